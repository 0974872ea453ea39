"""CPL Studio: Center-based Pseudo-Labeling for semi-supervised person re-identification."""

__version__ = "0.1.0"

#: The program name: the ``cpl`` command, the module of ``python -m cpl`` and the library's logger. Spelled
#: through the package name so that it is never confused with the method "cpl" (cpl/methods.py).
PROG = __name__
