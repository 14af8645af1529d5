"""``python -m fastchat_spec.web``: the chat UI (see ``fastchat_spec.web.app``)."""
from fastchat_spec.web.app import main
from fastchat_spec.web.stopping import exit_after

if __name__ == "__main__":
    exit_after(main)
