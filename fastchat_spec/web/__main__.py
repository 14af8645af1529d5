"""``python -m fastchat_spec.web``: the chat UI (see ``fastchat_spec.web.app``)."""
from fastchat_spec.web.app import main

if __name__ == "__main__":
    main()
