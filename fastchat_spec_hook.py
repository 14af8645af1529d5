"""Import hook that plugs fastchat-spec into unchanged FastChat commands.

This is a top-level module on purpose: ``fastchat_spec_hook.pth`` (installed at
the root of site-packages) imports it and calls ``install()`` in every
interpreter, and it must not import the ``fastchat_spec`` package itself, so
that the package is found later on the final ``sys.path`` (a checkout on
PYTHONPATH wins over the installed copy). That only adds a meta-path finder: nothing
else happens, and torch is not imported, until one of the FastChat modules in
``_PATCHES`` is imported. When it has finished executing, the matching patch
runs. ``FASTCHAT_SPEC_DISABLE=1`` turns all of this off.
"""
import importlib.abc
import importlib.machinery
import os
import sys

_PATCHES = {
    "fastchat.utils": "patch_utils",
    "fastchat.protocol.openai_api_protocol": "patch_openai_protocol",
    "fastchat.model.model_adapter": "patch_model_adapter",
    "fastchat.serve.model_worker": "patch_model_worker",
    # ``python -m fastchat.serve.model_worker`` runs that module as __main__, so
    # its ModelWorker is patched as the class is created (see fastchat_patches);
    # the worker app and its endpoints live here, imported by name in every case.
    "fastchat.serve.base_model_worker": "patch_base_model_worker",
    # ``python -m fastchat.serve.openai_api_server`` is __main__ too: patched as it calls uvicorn.run.
    "uvicorn": "patch_uvicorn",
}


def disabled() -> bool:
    return os.environ.get("FASTCHAT_SPEC_DISABLE", "").strip().lower() in ("1", "true", "yes")


def _apply(module_name: str) -> None:
    from fastchat_spec import fastchat_patches

    getattr(fastchat_patches, _PATCHES[module_name])(sys.modules[module_name])


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _apply(module.__name__)

    def __getattr__(self, name):  # get_code etc.: ``python -m fastchat.serve.model_worker`` (runpy) needs them
        return getattr(self.inner, name)


class _FastChatFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader)
        return spec


def install() -> None:
    """Called from the .pth file: arm the finder, import nothing heavy."""
    if disabled() or any(isinstance(f, _FastChatFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _FastChatFinder())
    # FastChat imported before the .pth ran (unusual, e.g. under some launchers).
    for name in _PATCHES:
        if name in sys.modules:
            _apply(name)


def register_now() -> None:
    """Explicit registration (``import fastchat_spec; fastchat_spec.register()``)."""
    install()
    import fastchat.model.model_adapter  # noqa: F401  (triggers the patch if new)

    for name in _PATCHES:
        if name in sys.modules:
            _apply(name)
