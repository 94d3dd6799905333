"""A unit's inputs, each read once and checked against the plan before anything uses it.

The plan hashed every input when it was made (jobs.InputFile); between then and the unit,
an S3 object may be overwritten or a local link re-pointed. So each input is read here once
per unit, through the job's read roots for local files (checked on the file actually
opened), and its bytes must hash to the plan's sha256: otherwise every job using it fails
with "input changed since it was planned", and no output is ever stylised under a key that
does not describe its bytes.

An input is decoded at the size its job needs (its content at the output size, its style at
`size` x `style_scale`, never under a thumbnail's), so a unit holds small images, whatever
the photos' resolution; the planner counts the one full-size decode held at a time.
"""

from __future__ import annotations

from PIL import Image

from nst_core.batch import storage, thumbnails
from nst_core.batch.jobs import InputFile, Job, sha256
from nst_core.batch.layout import RunLayout
from nst_core.batch.roots import Roots
from nst_core.engine import images
from nst_core.engine.limits import Limits
from nst_core.engine.targets import Pair
from nst_core.errors import ImageError


def decoded_sides(job: Job) -> list[tuple[InputFile, int]]:
    """Each input of `job` with the longer side it is decoded at: the content at the output
    size, each style at `size` x `style_scale` (the engine's at the output), and never under
    a thumbnail's side, so the gallery's thumbnails come from the same decode."""
    params = job.params
    style_side = round(params.size * params.style_scale)
    sides = [params.size] + [style_side] * len(job.style_files)
    return [(f, max(s, thumbnails.THUMB)) for f, s in zip(job.inputs, sides, strict=True)]


class InputChanged(ImageError):
    """An input's bytes are not those its job was planned (and keyed) with."""


class UnitInputs:
    """Decoded inputs of one unit, by URI and size; a failure is kept too, so that every
    job using a bad input fails with the same line without reading it again."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._found: dict[tuple[str, int], Image.Image | ImageError | storage.StorageError] = {}

    def pair(self, job: Job) -> Pair:
        """The engine's input for `job`. Raises ImageError (bad or changed input) or
        StorageError (a transient one propagates, so the unit is retried)."""
        (content_side, *style_sides) = [side for _, side in decoded_sides(job)]
        content = self.image(job.content_file, job, content_side)
        styles = [
            self.image(file, job, side)
            for file, side in zip(job.style_files, style_sides, strict=True)
        ]
        return Pair(
            content=content,
            styles=styles,
            params=job.params,
            style_weights=list(job.weights),
            content_name=job.content,
            style_names=[file.uri for file in job.style_files],
            style_ids=list(job.style_shas),
            content_id=job.content_sha,
        )

    def image(self, file: InputFile, job: Job, side: int) -> Image.Image:
        """`file` decoded with its longer side at most `side`."""
        key = (file.uri, side)
        if key not in self._found:
            try:
                self._found[key] = self._read(file, job, key[1])
            except storage.StorageError as exc:
                if exc.transient:
                    raise
                self._found[key] = exc
            except ImageError as exc:
                self._found[key] = exc
        found = self._found[key]
        if isinstance(found, Exception):
            raise found
        return found

    def _read(self, file: InputFile, job: Job, longest: int) -> Image.Image:
        roots = Roots(read=job.read_roots)
        problem = roots.read_problem if job.read_roots is not None else None
        data = storage.read_bytes(file.uri, self.limits.max_input_bytes, confine=problem)
        if sha256(data) != file.sha256:
            raise InputChanged(f"input changed since it was planned: {file.uri}")
        image = images.decode_image(
            data, file.uri, longest=longest, max_pixels=self.limits.max_input_pixels
        )
        del data  # the encoded bytes, freed before the next input is read
        # The gallery's thumbnail of this input, from the bytes in memory now.
        thumbnails.save_input(RunLayout(storage.parent(job.output)), file.sha256, image)
        return image
