"""Authentication and authorization from files: passwords, the ACL, and their hooks.

A layer above the sans-IO core (it reads files): ``passwords`` (PBKDF2 hashes and the
password file), ``acl`` (the ACL language), ``hooks`` (loading, reloading, and the
core's hooks). The names most users need are here too.
"""

from trio_mqtt.auth.acl import Access, AclFile, AclRule, filter_covers
from trio_mqtt.auth.hooks import (
    AuthFiles,
    acl_connect_hook,
    acl_publish_hook,
    acl_subscribe_hook,
    install_auth,
    password_connect_hook,
)
from trio_mqtt.auth.passwords import (
    DEFAULT_ITERATIONS,
    HASH_SCHEME,
    MAX_ITERATIONS,
    PasswordFile,
    PasswordHash,
    hash_password,
    split_password_line,
)

__all__ = [
    "DEFAULT_ITERATIONS",
    "HASH_SCHEME",
    "MAX_ITERATIONS",
    "Access",
    "AclFile",
    "AclRule",
    "AuthFiles",
    "PasswordFile",
    "PasswordHash",
    "acl_connect_hook",
    "acl_publish_hook",
    "acl_subscribe_hook",
    "filter_covers",
    "hash_password",
    "install_auth",
    "password_connect_hook",
    "split_password_line",
]
