"""One place that turns local paths and s3:// URIs into filesystem calls (pyarrow.fs)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

S3_SCHEMES = ("s3", "s3a", "s3n")


def is_s3(uri: str) -> bool:
    return urlparse(uri).scheme in S3_SCHEMES


def normalize_uri(uri: str) -> str:
    """Absolute local path, or `s3://bucket/key` without a trailing slash."""
    parsed = urlparse(uri)
    if parsed.scheme in S3_SCHEMES:
        return f"s3://{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme == "file":
        return os.path.abspath(parsed.path)
    if parsed.scheme:
        raise ValueError(
            f"Unsupported URI scheme {parsed.scheme!r} in {uri!r}: use a path or s3://"
        )
    return os.path.abspath(os.path.expanduser(uri))


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def s3_endpoint() -> str | None:
    """The S3 endpoint of the standard AWS environment (MinIO, moto), None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def _s3_filesystem() -> pafs.S3FileSystem:
    """This process's S3 client for the current AWS environment: one per process and
    environment, not one per file. Each new client opens its own connections (a TLS handshake
    each) and, on EC2, asks the instance metadata service for its region and credentials again;
    a step that reads every photo would pay that per photo."""
    aws = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    # The process id: a forked child builds its own client rather than share its parent's.
    return _s3_filesystem_for(os.getpid(), aws)


@functools.lru_cache(maxsize=4)
def _s3_filesystem_for(pid: int, aws: tuple[tuple[str, str], ...]) -> pafs.S3FileSystem:
    # pyarrow does not read AWS_ENDPOINT_URL itself; honour it so MinIO and moto work too.
    endpoint = s3_endpoint()
    kwargs: dict = {"region": _s3_region()}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc or endpoint, scheme=parsed.scheme or "https")
    # Delayed open: a file smaller than one upload part is one PUT when it is closed, instead of
    # a multipart upload started at open (three requests). Most files the steps write are small
    # (one per class); an error then surfaces at close, and every writer here closes its files
    # and lets the close raise.
    return pafs.S3FileSystem(allow_delayed_open=True, **{k: v for k, v in kwargs.items() if v})


def delta_storage_options(uri: str) -> dict[str, str]:
    """What the `deltalake` package needs to commit to the table at `uri`: on S3, the
    environment's region and endpoint, and commits by conditional PUT (a commit file is created
    only if absent, as Delta's log requires), which S3 has without a lock service."""
    if not is_s3(uri):
        return {}
    options = {"AWS_CONDITIONAL_PUT": "etag"}
    region = _s3_region()
    if region:
        options["AWS_REGION"] = region
    endpoint = s3_endpoint()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if urlparse(endpoint).scheme == "http":
            options["AWS_ALLOW_HTTP"] = "true"
    return options


@dataclass(frozen=True)
class Location:
    """A filesystem and the path inside it that a URI names."""

    fs: pafs.FileSystem
    path: str

    @classmethod
    def of(cls, uri: str) -> Location:
        return cls(_s3_filesystem() if is_s3(uri) else pafs.LocalFileSystem(), path_of(uri))


def path_of(uri: str) -> str:
    """The path inside its filesystem that a URI names (`Location.of`), without building the
    filesystem: many files of one place need one filesystem, not one each."""
    uri = normalize_uri(uri)
    if is_s3(uri):
        parsed = urlparse(uri)
        return f"{parsed.netloc}{parsed.path}"
    return uri


def to_uri(template: str, path: str) -> str:
    """Turn a pyarrow path back into a URI of the same kind as `template`."""
    return f"s3://{path}" if is_s3(template) else path


def exists(uri: str) -> bool:
    loc = Location.of(uri)
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    loc = Location.of(uri)
    return loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory


def list_files(uri: str) -> list[pafs.FileInfo]:
    """Every file below `uri`, recursively (hidden ones included: callers decide)."""
    loc = Location.of(uri)
    selector = pafs.FileSelector(loc.path, recursive=True, allow_not_found=False)
    return [info for info in loc.fs.get_file_info(selector) if info.type == pafs.FileType.File]


def list_dirs(uri: str) -> list[str]:
    """Names of the folders directly below `uri` (empty if it does not exist)."""
    loc = Location.of(uri)
    selector = pafs.FileSelector(loc.path, recursive=False, allow_not_found=True)
    return [
        i.base_name for i in loc.fs.get_file_info(selector) if i.type == pafs.FileType.Directory
    ]


def list_entries(uri: str) -> list[pafs.FileInfo]:
    """The entries directly below `uri`, with their sizes and times (empty if it does not
    exist)."""
    loc = Location.of(uri)
    selector = pafs.FileSelector(loc.path, recursive=False, allow_not_found=True)
    return loc.fs.get_file_info(selector)


def list_names(uri: str) -> list[str]:
    """Names of the entries directly below `uri` (empty if it does not exist)."""
    return [info.base_name for info in list_entries(uri)]


def delete_file(uri: str) -> None:
    loc = Location.of(uri)
    loc.fs.delete_file(loc.path)


def delete_dir(uri: str) -> None:
    loc = Location.of(uri)
    if loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory:
        loc.fs.delete_dir(loc.path)


def make_dirs(fs: pafs.FileSystem, folder: str) -> None:
    """`folder` and its parents, where the filesystem has folders. S3 has none: pyarrow would
    check the bucket and write an empty marker object for every level of the path, every time,
    before each file."""
    if fs.type_name != "s3":  # (a pyarrow built without S3 has no S3FileSystem class)
        fs.create_dir(folder, recursive=True)


def read_bytes(uri: str) -> bytes:
    loc = Location.of(uri)
    with loc.fs.open_input_stream(loc.path) as stream:
        return stream.read()


def write_bytes(uri: str, data: bytes) -> None:
    loc = Location.of(uri)
    make_dirs(loc.fs, loc.path.rsplit("/", 1)[0])
    with loc.fs.open_output_stream(loc.path) as stream:
        stream.write(data)


def size(uri: str) -> int:
    loc = Location.of(uri)
    return int(loc.fs.get_file_info(loc.path).size or 0)


def copy(src: str, dst: str) -> None:
    """Copy a file (server-side within S3)."""
    source, target = Location.of(src), Location.of(dst)
    make_dirs(target.fs, target.path.rsplit("/", 1)[0])
    if type(source.fs) is type(target.fs):
        source.fs.copy_file(source.path, target.path)
    else:
        write_bytes(dst, read_bytes(src))


def move(src: str, dst: str) -> None:
    loc, target = Location.of(src), Location.of(dst)
    make_dirs(target.fs, target.path.rsplit("/", 1)[0])
    loc.fs.move(loc.path, target.path)


def spark_uri(uri: str, native_s3: bool = False) -> str:
    """The URI Spark should use: s3a:// through Hadoop's S3A locally, s3:// (EMRFS) on EMR."""
    uri = normalize_uri(uri)
    if is_s3(uri) and not native_s3:
        return "s3a://" + uri[len("s3://") :]
    return uri
