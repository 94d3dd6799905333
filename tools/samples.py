"""What the local bucket holds from the start: the demo's drawn inputs and a manifest.

    s3://team-bucket/samples/content-*.png, style-*.png   (nst_core/batch/demo.py)
    s3://team-bucket/samples/demo.yaml                      a batch of them, 2 x 2 jobs
    s3://team-bucket/inbox/                                 the watcher's prefix (empty)

The manifest names its inputs by absolute URI, so the same file works run ad hoc from
samples/ and dropped into the inbox (relative paths would resolve beside each). Objects
that exist are left as they are: a user may have replaced them.
"""

from __future__ import annotations

from pathlib import Path

from nst_core.batch.demo import write_demo_inputs
from tools.seaweed import LocalS3

BUCKET = "team-bucket"
SAMPLES = "samples"
SAMPLE_MANIFEST = f"""# A sample batch in the stack's local bucket: 2 drawn contents x 2 styles.
# Run it ad hoc, or drop it into the inbox:  python -m tools.stack drop THIS_FILE
version: 1
name: demo
output: s3://{BUCKET}/outputs/{{name}}
format: png
defaults:
  size: 128
  iterations: 100
contents:
  - s3://{BUCKET}/{SAMPLES}/content-*.png
styles:
  - s3://{BUCKET}/{SAMPLES}/style-*.png
"""


def sample_manifest_uri() -> str:
    return f"s3://{BUCKET}/{SAMPLES}/demo.yaml"


def seed_bucket(s3: LocalS3, folder: Path) -> Path:
    """Create the bucket and its samples where missing; returns the local copy of the
    sample manifest (HOME/samples/demo.yaml), the file a user edits and drops."""
    s3.ensure_bucket(BUCKET)
    for path in write_demo_inputs(folder):
        s3.put_missing(BUCKET, f"{SAMPLES}/{path.name}", path.read_bytes())
    manifest = folder / "demo.yaml"
    if not manifest.exists():
        manifest.write_text(SAMPLE_MANIFEST)
    s3.put_missing(BUCKET, f"{SAMPLES}/demo.yaml", SAMPLE_MANIFEST.encode())
    return manifest
