"""Secrets never leave the process in clear: the one redaction every outgoing text passes through.

Secrets live in environment variables only (the cluster fills them from Kubernetes Secrets); a config names the
variable (`eval.judge_api_key_env`, `publish.hub_token_env`), never holds the value, and a URL in a config or in
MLFLOW_TRACKING_URI may not carry a password (`check_url`). What still goes out (MLflow params and tags, the one-line
errors the CLIs and steps print, warnings that quote a server's reply) goes through `redact` first, which replaces

- the value of every environment variable whose NAME says it is a secret (`SECRET_NAME`: ...TOKEN, ...PASSWORD,
  ...SECRET, ...API_KEY, ...ACCESS_KEY, PGPASSWORD...), when at least `MIN_SECRET_LEN` characters long: a shorter
  value is a placeholder (`none`, `x`), and replacing it everywhere would mangle ordinary text;
- the password in a URL's user info: `https://user:PASSWORD@host` -> `https://user:***@host`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

MASK = "***"
MIN_SECRET_LEN = 8
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|ACCESS_KEY|PRIVATE_KEY)$", re.IGNORECASE)
"""Environment variables holding secrets: HF_TOKEN, VIGOS_JUDGE_API_KEY (and any other *_API_KEY a config names),
MLFLOW_TRACKING_PASSWORD / _TOKEN, KF_PIPELINES_TOKEN, PGPASSWORD / POSTGRES_PASSWORD, AWS_SECRET_ACCESS_KEY..."""
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/@]*@")


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The values of the secret-named environment variables, longest first (so a secret that contains another is
    replaced whole)."""
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if SECRET_NAME.search(k) and len(v.strip()) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text: str, also: Iterable[str] = ()) -> str:
    """`text` with every secret value (the environment's, and `also`) and every URL's password masked."""
    text = str(text)
    for value in [*sorted((a for a in also if a), key=len, reverse=True), *secret_values()]:
        text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(rf"\1:{MASK}@", text)


def has_password(url: str) -> bool:
    """Whether `url` carries a password in its user info (`scheme://user:PASSWORD@host`)."""
    try:
        parts = urlsplit(str(url).strip())
    except ValueError:
        return False
    return bool(parts.scheme and parts.password is not None)
