"""fastchat-spec: speculative multi-head decoding inside unchanged FastChat.

Importing this package is cheap (no torch). ``register()`` wires our adapters
and ``generate_stream`` into an already imported FastChat; the ``.pth`` import
hook does the same automatically the first time FastChat's model adapter module
is imported (see ``fastchat_spec_hook``).
"""
import os

__version__ = "0.1.0"

DEFAULT_MODEL_NAME = "medusa-vicuna-nano"


def default_model_path() -> str:
    """Path of the bundled tiny Vicuna-style model with trained Medusa heads."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", DEFAULT_MODEL_NAME)


def register() -> None:
    """Register our adapters, generate_stream and FastChat fixes in this process."""
    import fastchat_spec_hook

    fastchat_spec_hook.register_now()
