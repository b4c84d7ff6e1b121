"""``veilleuse setup-search`` (the Kubernetes setup Job) against the real Elasticsearch: it
makes what the sink makes at start, twice without harm, and never rewrites a template."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from connectors.sinks.elasticsearch import MAPPING_VERSION, read_generation
from tests.integration.sinks.conftest import EsRun


async def setup_search(run: EsRun) -> subprocess.CompletedProcess[str]:
    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "setup-search"],
            env={**os.environ, **run.env()},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return await asyncio.to_thread(call)


async def test_setup_search_makes_the_generation_and_templates_once(es_run: EsRun) -> None:
    first = await setup_search(es_run)
    assert first.returncode == 0, first.stderr
    assert f"search index {es_run.index_prefix!r}: generation 1" in first.stdout
    assert await read_generation(es_run.es, es_run.names) == 1
    for template, pattern, alias in es_run.names.kinds(1):
        found = await es_run.es.indices.get_index_template(name=template)
        body = found["index_templates"][0]["index_template"]
        assert body["index_patterns"] == [pattern]
        assert alias in body["template"]["aliases"]
        assert body["_meta"]["mapping_version"] == MAPPING_VERSION

    # A template already there is left alone (a mapping only changes through a reindex).
    messages_template = es_run.names.messages_template(1)
    await es_run.es.indices.put_index_template(
        name=messages_template,
        index_patterns=[es_run.names.messages_pattern(1)],
        template={"settings": {"number_of_shards": 1}},
        meta={"mapping_version": MAPPING_VERSION, "generation": 1, "marker": "kept"},
    )
    second = await setup_search(es_run)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    kept = await es_run.es.indices.get_index_template(name=messages_template)
    assert kept["index_templates"][0]["index_template"]["_meta"]["marker"] == "kept"
    assert await read_generation(es_run.es, es_run.names) == 1
