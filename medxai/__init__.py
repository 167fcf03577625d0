"""medxai: segment medical images and explain the segmentation."""

from medxai._version import __version__

__all__ = ["__version__"]
