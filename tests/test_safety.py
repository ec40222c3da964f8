"""Safe defaults: weights never unpickled, passwords in URLs never written or shown, served names fingerprinted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rerank import Reranker
from rerank.config import REDACTED, apply_overrides, from_dict, redact_url, to_dict
from rerank.errors import ConfigError, RerankError


def test_redact_url_hides_only_the_credentials() -> None:
    assert redact_url("http://svc:pa55@127.0.0.1:8000/v1") == f"http://svc:{REDACTED}@127.0.0.1:8000/v1"
    assert redact_url("https://tok3n@host/x") == f"https://{REDACTED}@host/x"  # a bare user name may be a token
    for plain in ("http://127.0.0.1:8000", "mail me@host", "http://h/a@b"):
        assert redact_url(plain) == plain


@dataclasses.dataclass
class _Cfg:
    base_url: str = ""
    options: dict = dataclasses.field(default_factory=dict)


def test_config_records_and_errors_never_hold_a_url_password() -> None:
    cfg = _Cfg("http://u:secret1@h/v1", {"base_url": "https://u:secret2@h"})
    assert "secret" not in json.dumps(to_dict(cfg))
    with pytest.raises(ConfigError) as e:
        from_dict(_Cfg, apply_overrides({}, ["bogus=http://u:secret3@h"]), where="x")
    assert "secret3" not in str(e.value) and "bogus=http://u:<redacted>@h" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a misspelt secret key is not quoted either
        from_dict(_Cfg, apply_overrides({}, ["api-key=TYPOSECRET"]), where="x")
    assert "TYPOSECRET" not in str(e.value)


def test_remote_errors_do_not_show_a_url_password() -> None:
    with pytest.raises(RerankError) as e:  # the server check when it loads
        Reranker.load("remote", base_url="http://u:pw_in_url@127.0.0.1:9", max_retries=0, timeout=2)
    assert "pw_in_url" not in str(e.value) and "unreachable" in str(e.value)
    from rerank.client import RemoteReranker, RemoteRerankerConfig

    rr = RemoteReranker(RemoteRerankerConfig(base_url="http://u:pw_in_url@127.0.0.1:9", max_retries=0, timeout=2))
    with pytest.raises(RerankError) as e:  # a request
        rr.rerank("q", ["a"])
    assert "pw_in_url" not in str(e.value) and "unreachable" in str(e.value)


def test_encoders_load_safetensors_only(tiny_st_dir: Path, tmp_path: Path) -> None:
    """A folder holding only pickled ``pytorch_model.bin`` weights is refused, not unpickled."""
    from rerank.retrieval.dense import BiEncoder

    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in tiny_st_dir.rglob("*"):
        if f.is_file() and f.suffix != ".safetensors":
            target = folder / f.relative_to(tiny_st_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    from safetensors.torch import load_file

    weights = next(tiny_st_dir.rglob("*.safetensors"))
    torch.save(load_file(weights), folder / weights.relative_to(tiny_st_dir).with_name("pytorch_model.bin"))
    with pytest.raises(RerankError, match="cannot load encoder"):
        BiEncoder.load(str(folder))


def test_a_served_model_name_is_its_own_fingerprint_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the hub offline, a served model's name that is not a local folder made the LLM cache fail."""
    from rerank.backends.cache import model_fingerprint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_fingerprint("org/served-model-not-cached") == "name:org/served-model-not-cached"
