"""Finds the image files under an input root and the fruit classes their folders name."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fruits_assets.storage import filesystem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

IGNORED_HIDDEN = "hidden file or folder"
IGNORED_NOT_IMAGE = "not a .jpg/.jpeg/.png file"
IGNORED_NO_CLASS = "image directly in the input root: no class folder"


@dataclass(frozen=True)
class ImageFile:
    path: str
    label: str
    size: int
    modification_time: float  # seconds since the epoch


@dataclass
class Scan:
    """What an input root holds: image files by class, and what was ignored and why."""

    root: str
    images: list[ImageFile] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def classes(self) -> list[str]:
        return sorted({image.label for image in self.images})

    def images_of(self, labels: set[str]) -> list[ImageFile]:
        return [image for image in self.images if image.label in labels]

    def ignored_counts(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.ignored))


def scan(root: str) -> Scan:
    """List `root` recursively; an image's label is its parent folder's name, as in the seed."""
    root = filesystem.normalize_uri(root)
    if not filesystem.is_dir(root):
        raise FileNotFoundError(f"Input root {root!r} does not exist or is not a folder")
    loc = filesystem.Location.of(root)
    prefix = loc.path.rstrip("/") + "/"
    result = Scan(root=root)
    for info in filesystem.list_files(root):
        uri = filesystem.to_uri(root, info.path)
        relative = info.path[len(prefix) :] if info.path.startswith(prefix) else info.base_name
        parts = relative.split("/")
        if any(part.startswith(".") for part in parts):
            result.ignored.append((uri, IGNORED_HIDDEN))
        elif not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            result.ignored.append((uri, IGNORED_NOT_IMAGE))
        elif len(parts) < 2:
            result.ignored.append((uri, IGNORED_NO_CLASS))
        else:
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            result.images.append(ImageFile(uri, parts[-2], int(info.size or 0), mtime))
    result.images.sort(key=lambda image: image.path)
    result.ignored.sort()
    return result
