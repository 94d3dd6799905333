"""Manifest v1: the YAML contract data teams write, validated strictly and expanded into jobs.

This package's public API, re-exported from its modules: errors (ManifestError, every problem
reported at once as `FILE: key.path[index]: what was expected, what was found`), guard (safe,
budgeted loading of untrusted YAML), schema (the pydantic models, json_schema, parse_manifest),
resolve (URI rules and read/write roots, checked before anything is touched), expand
(manifest -> Plan), plan (Plan, JobSpec) and load (load_plan, from a path or s3:// URI).
"""

from nst_core.batch.manifest.errors import MAX_PROBLEMS, ManifestError
from nst_core.batch.manifest.expand import DEFAULT_MAX_JOBS, expand
from nst_core.batch.manifest.guard import MAX_MANIFEST_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES
from nst_core.batch.manifest.load import load_plan
from nst_core.batch.manifest.plan import JobSpec, Plan
from nst_core.batch.manifest.resolve import MAX_URI_CHARS
from nst_core.batch.manifest.schema import (
    NAME_PATTERN,
    OUTPUT_FORMATS,
    Manifest,
    PairSpec,
    ParamsPatch,
    StyleList,
    StyleParamsPatch,
    StyleRef,
    json_schema,
    parse_manifest,
    patch_problems,
)

__all__ = [
    "DEFAULT_MAX_JOBS",
    "MAX_MANIFEST_BYTES",
    "MAX_PROBLEMS",
    "MAX_URI_CHARS",
    "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES",
    "NAME_PATTERN",
    "OUTPUT_FORMATS",
    "JobSpec",
    "Manifest",
    "ManifestError",
    "PairSpec",
    "ParamsPatch",
    "Plan",
    "StyleList",
    "StyleParamsPatch",
    "StyleRef",
    "expand",
    "json_schema",
    "load_plan",
    "parse_manifest",
    "patch_problems",
]
