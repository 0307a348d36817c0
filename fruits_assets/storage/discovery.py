"""Finds the image files under an input root and the fruit classes their folders name.

Every file below the root is either an image of a class or ignored with a reason, never lost
silently. Symbolic links are never followed: a link out of the root would read files the root
does not hold, a link inside it would count a file twice (or forever, in a loop); both are
reported as ignored, with where they point.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from fruits_assets.storage import filesystem, layout

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

IGNORED_HIDDEN = "hidden file or folder"
IGNORED_NOT_IMAGE = "not a .jpg/.jpeg/.png file"
IGNORED_NO_CLASS = "image directly in the input root: no class folder"
IGNORED_LINK_OUT = "symbolic link out of the input root: not followed"
IGNORED_LINK_INSIDE = "symbolic link inside the input root: its target is counted at its own path"
IGNORED_LINK_BROKEN = "broken symbolic link"
IGNORED_NOT_UTF8 = "file or folder name is not valid UTF-8"
IGNORED_LONG_CLASS = (
    f"class folder name too long for the output layout (over {layout.MAX_FOLDER_NAME_BYTES} "
    "bytes as a label= folder)"
)


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
        return dict(Counter(reason.split(" -> ")[0] for _, reason in self.ignored))

    def add(self, uri: str, relative: str, size: int, mtime: float) -> None:
        """Classify one regular file by its path relative to the root."""
        parts = relative.split("/")
        if any(part.startswith(".") for part in parts):
            self.ignored.append((uri, IGNORED_HIDDEN))
        elif not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            self.ignored.append((uri, IGNORED_NOT_IMAGE))
        elif len(parts) < 2:
            self.ignored.append((uri, IGNORED_NO_CLASS))
        elif layout.class_name_too_long(parts[-2]):
            self.ignored.append((uri, IGNORED_LONG_CLASS))
        else:
            self.images.append(ImageFile(uri, parts[-2], size, mtime))


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        return False
    return True


def _scan_local(root: str, result: Scan) -> None:
    real_root = os.path.realpath(root)
    pending = [root]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                relative = os.path.relpath(entry.path, root).replace(os.sep, "/")
                if not _utf8(entry.path):
                    shown = entry.path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    result.ignored.append((shown, IGNORED_NOT_UTF8))
                elif entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not os.path.exists(target):
                        result.ignored.append((entry.path, IGNORED_LINK_BROKEN))
                    elif os.path.commonpath([real_root, target]) != real_root:
                        result.ignored.append((entry.path, f"{IGNORED_LINK_OUT} -> {target}"))
                    else:
                        inside = os.path.relpath(target, real_root)
                        result.ignored.append((entry.path, f"{IGNORED_LINK_INSIDE} -> {inside}"))
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    result.add(entry.path, relative, stat.st_size, stat.st_mtime)


def _scan_s3(root: str, result: Scan) -> None:
    prefix = filesystem.Location.of(root).path.rstrip("/") + "/"
    for info in filesystem.list_files(root):
        uri = filesystem.to_uri(root, info.path)
        relative = info.path[len(prefix) :] if info.path.startswith(prefix) else info.base_name
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        result.add(uri, relative, int(info.size or 0), mtime)


# The listing `fruits run` made for this process's runs: raw_images takes it instead of listing
# the input root again (on S3, a listing of the whole prefix).
_LISTED: dict[str, Scan] = {}


def remember(listing: Scan) -> None:
    _LISTED[listing.root] = listing


def scan(root: str, reuse: bool = False) -> Scan:
    """List `root` recursively; an image's label is its parent folder's name, as in the seed.
    `reuse`: the listing this process remembered for `root`, if any."""
    root = filesystem.normalize_uri(root)
    if reuse and root in _LISTED:
        return _LISTED[root]
    if not filesystem.is_dir(root):
        raise FileNotFoundError(f"Input root {root!r} does not exist or is not a folder")
    result = Scan(root=root)
    if filesystem.is_s3(root):
        _scan_s3(root, result)
    else:
        _scan_local(root, result)
    result.images.sort(key=lambda image: image.path)
    result.ignored.sort()
    return result
