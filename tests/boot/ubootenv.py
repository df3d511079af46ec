# SPDX-License-Identifier: MIT
"""A U-Boot environment in a file, as libubootenv (fw_printenv, fw_setenv, SWUpdate's `uboot`
interface) reads and writes it when /etc/fw_env.config names that file: what the SWUpdate and
Mender tests give the guest, and what the harness, as the bootloader, reads after the poweroff."""

import struct
import zlib
from typing import Dict

#: The environment's size (fw_env.config: `FILE 0x0 0x4000`), a single copy.
ENV_SIZE = 0x4000


def fw_env_config(path: str) -> str:
    """/etc/fw_env.config naming `path` as the only copy of the environment."""
    return f"{path} 0x0 {ENV_SIZE:#x}\n"


def uboot_env(variables: Dict[str, str]) -> bytes:
    """A U-Boot environment (single copy, as fw_env.config describes it): CRC32 of the data,
    then `name=value` strings, each NUL-terminated, an empty one last, padded to ENV_SIZE."""
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in variables.items()) + b"\0"
    data = data.ljust(ENV_SIZE - 4, b"\0")
    return struct.pack("<I", zlib.crc32(data)) + data


def parse_uboot_env(raw: bytes) -> Dict[str, str]:
    """The variables of a U-Boot environment, after checking its CRC (as U-Boot does)."""
    assert len(raw) == ENV_SIZE, len(raw)
    (crc,) = struct.unpack("<I", raw[:4])
    assert crc == zlib.crc32(raw[4:]), "bad CRC: U-Boot would fall back to its default env"
    out = {}
    for item in raw[4:].split(b"\0"):
        if not item:
            break
        name, _, value = item.decode().partition("=")
        out[name] = value
    return out
