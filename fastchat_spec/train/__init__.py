"""Training: ShareGPT data, the SentencePiece tokenizer, the Vicuna-style base model and the draft heads.

Command lines (``python -m fastchat_spec.train.<name> --help``): ``data``,
``tokenizer``, ``base``, ``medusa``, ``hydra``, ``chimera``, ``cllm_data``,
``cllm``, ``distill``, ``tree_search``, ``chimera_eval``.

What the trainers share:

==================  ===============================================================================
``arguments``       HF dataclasses and defaults of the head trainers' command lines (``parse_args``)
``dataset``         FastChat JSON -> tokens and label masks through FastChat's ``preprocess``; ``Collator``
``trainer``         ``HeadTrainer`` (logs every loss term), ``load_base``, ``base_hidden_states``
``losses``          label offsets, cross-entropy / KL scaled by HF's token count, top-k accuracy
``report``          held-out accuracy per head, the tree grown from it, ``train_report.json``
``checkpoint``      what a checkpoint records about its base (path, tokenizer, template, dtype)
``split_long``      long conversations cut between rounds (used by ``data``)
==================  ===============================================================================
"""
