"""CPL Studio: Center-based Pseudo-Labeling for semi-supervised person re-identification."""

__version__ = "0.1.0"
