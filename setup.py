"""Only here to ship the import hook: a .pth file at the root of site-packages.

Everything else is declared in setup.cfg.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "fastchat_spec_hook.pth"


class BuildWithHook(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildWithHook})
