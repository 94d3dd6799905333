"""Property test: whatever bytes arrive, the parser answers a Plan or a ManifestError."""

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nst_core.batch.manifest import ManifestError, Plan, expand, parse_manifest

KEYS = st.sampled_from(
    [
        "version",
        "name",
        "output",
        "format",
        "defaults",
        "contents",
        "styles",
        "pairs",
        "content",
        "style",
        "params",
        "uri",
        "weight",
        "size",
        "iterations",
        "style_layers",
        "scales",
        "seed",
        "device",
        "x",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["a.png", "*.png", "s3://b/k.png", "http://x/y", "../up", "", "{name}", "1"]),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
VALID = b"""version: 1
output: out/{name}
defaults: {size: 64, iterations: 5}
contents: [a.png]
styles: [s.png]
pairs:
  - {content: a.png, style: [{uri: s.png, weight: 0.5}], params: {seed: 3}}
"""

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz")
    (path / "a.png").write_bytes(b"not read while planning")
    (path / "s.png").write_bytes(b"not read while planning")
    return path


def outcome(data: bytes, folder) -> str:
    try:
        manifest = parse_manifest(data, "fuzz.yaml")
        assert isinstance(expand(manifest, str(folder / "fuzz.yaml")), Plan)
        return "plan"
    except ManifestError as exc:
        assert exc.problems and all(p.strip() for p in exc.problems)
        return "rejected"


def test_the_unmutated_manifest_is_valid(folder):
    assert outcome(VALID, folder) == "plan"


@FUZZ
@given(doc=st.dictionaries(KEYS, VALUES, max_size=8))
def test_structured_documents(folder, doc):
    outcome(yaml.safe_dump(doc).encode(), folder)


@FUZZ
@given(data=st.data())
def test_byte_mutations_of_a_valid_manifest(folder, data):
    text = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.sampled_from(list(b"{}[]:-*&!|>'\"\\\n #,?0a\xff")))
        if action == "insert":
            text.insert(position, byte)
        elif position < len(text):
            if action == "delete":
                del text[position]
            else:
                text[position] = byte
    outcome(bytes(text), folder)
