"""The root of Veilleuse's exceptions, and the schemas' own.

The root lives here, in the package with no dependency but fastavro, so that a consumer can use
``schemas`` without installing the pipeline, and the pipeline's errors (``pipeline.errors``,
which re-exports :class:`VeilleuseError`) still have one root that ``SchemaError`` shares.
"""

from __future__ import annotations


class VeilleuseError(Exception):
    """Root of every error Veilleuse raises on purpose."""


class SchemaError(VeilleuseError):
    """A record could not be encoded or decoded, or a schema folder is inconsistent."""
