"""Reaching a Ray cluster that is already running: which address form each entry point takes, and the token
of a cluster started with token authentication (Ray >= 2.52: `ray start` writes ~/.ray/auth_token)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from deepgen.errors import DeepgenError

TOKEN_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class ClusterAccessError(DeepgenError):
    """The cluster cannot be reached or refused us; a failure at run time."""

    exit_status = 1


def token_source() -> str | None:
    """Where a Ray token is at hand: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidates = [Path(path).expanduser()] if path else [Path.home() / ".ray" / "auth_token"]
    for file in candidates:
        try:
            if file.is_file() and file.read_text().strip():
                return str(file)
        except OSError:
            continue
    return None


def use_token_if_present() -> str | None:
    """Send the token to a remote cluster when one is at hand and RAY_AUTH_MODE is not set, as Ray itself does
    for a local `ray.init()`; a cluster without token auth ignores it. Returns the token's source, or None."""
    if os.environ.get("RAY_AUTH_MODE"):
        return None
    source = token_source()
    if source is None:
        return None
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its config at import: refresh it, so this process sends the token too
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass
    return source


def token_refusal(address: str) -> ClusterAccessError:
    """One line for a cluster that wants a token we do not have (or one it does not accept)."""
    have = token_source()
    if have:
        return ClusterAccessError(f"the Ray cluster at {address} refused the token from {have}; set RAY_AUTH_TOKEN "
                                  "(or RAY_AUTH_TOKEN_PATH) to the cluster's token (`ray get-auth-token` on its head)")
    return ClusterAccessError(f"the Ray cluster at {address} wants a token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH "
                              "to its file, or copy it to ~/.ray/auth_token (`ray get-auth-token` on the head node)")


def is_auth_error(e: BaseException, http: bool = False) -> bool:
    """Ray's AuthenticationError (or, from the job API's client, an HTTP 401/403)."""
    if type(e).__name__ == "AuthenticationError" and type(e).__module__.startswith("ray"):
        return True
    return http and any(code in str(e) for code in (" 401", " 403"))


def cluster_address_for_init(address: str) -> str:
    """RAY_ADDRESS for `ray.init` (run/train/tune on a running cluster): HOST:PORT (the GCS, 6379), ray://
    (Ray Client) or `auto`. The job API's http:// form cannot be joined from here: refused in one line that
    says which command and variable take it."""
    if re.match(r"^https?://", address):
        raise DeepgenError(f"RAY_ADDRESS={address} is the Ray job API; `deepgen run/train/tune` join a cluster at its "
                           "GCS address (RAY_ADDRESS=HOST:6379) or ray://HOST:10001; to run there through the job "
                           f"API use `deepgen submit PIPELINE --address {address}` (or RAY_API_SERVER_ADDRESS)")
    return address


def init_remote(address: str) -> None:
    """ray.init on a running cluster, with its token when one is at hand; failures are one line."""
    import ray

    address = cluster_address_for_init(address)
    use_token_if_present()
    try:
        ray.init(address=address, log_to_driver=True)
    except Exception as e:  # noqa: BLE001 - ConnectionError, AuthenticationError, RuntimeError, ...: all one line
        if is_auth_error(e):
            raise token_refusal(address) from None
        text = " ".join(str(e).split())[:300] or type(e).__name__
        raise ClusterAccessError(f"cannot join the Ray cluster at RAY_ADDRESS={address}: {text}") from None
