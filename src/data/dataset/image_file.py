"""Opening one image file as RGB, with an error that names the file when it cannot be decoded.

PIL's own errors do not always say which file failed (a truncated JPEG raises ``OSError:
Truncated File Read``), and a DataLoader worker adds its own traceback on top. Every image
dataset of the project that reads files through PIL uses :func:`load_rgb_image` (also as the
``loader`` of torchvision's ``ImageFolder``), so a corrupted file stops the run with its path.
"""

from __future__ import annotations

import os

from PIL import Image


class ImageDecodeError(ValueError):
    """An image file exists but cannot be decoded (truncated, corrupted or not an image)."""


def load_rgb_image(path: str | os.PathLike[str]) -> Image.Image:
    """The image at ``path``, fully decoded and converted to RGB (grey images become 3-channel).

    Raises:
        FileNotFoundError: ``path`` no longer exists (removed after the dataset was indexed).
        ImageDecodeError: the file cannot be decoded; the message names it.
    """
    try:
        with Image.open(path) as img:
            # convert() forces the full decode, so a truncated file fails here, inside the try.
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"image {os.fspath(path)!r} disappeared after the dataset was indexed; restore the file, "
            "or rebuild the dataset folder"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(
            f"cannot decode image {os.fspath(path)!r} ({type(err).__name__}: {err}); the file is truncated, "
            "corrupted or not an image — replace it with a good copy (re-extract the dataset archive) or delete it"
        ) from err
