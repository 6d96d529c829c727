"""The ``pipetask`` command line: build pipelines and quantum graphs, run them, report on runs.

Options are named as in the LSST stack::

    pipetask build -p pipelines/ProcessCcd.yaml --show graph --pipeline-dot pipeline.dot
    pipetask qgraph -b repo -i raw,calib -o u/me/ccd -p ProcessCcd.yaml -d "visit IN (1..10)" -q ccd.qgraph
    pipetask run -b repo -i raw -o u/me/ccd -p ProcessCcd.yaml -c isr:doDark=false -j 2 --register-dataset-types
    pipetask run -b repo -g ccd.qgraph -j 2                      # run a saved graph
    pipetask run -b repo -g ccd.qgraph --executor parsl --site slurm.yaml   # on a Slurm cluster
    pipetask run -b repo -o u/me/ccd -p ... --extend-run --skip-existing    # resume
    pipetask report -b repo --output-run u/me/ccd/20261120T010203Z
    pipetask report -b repo --output-run u/me/ccd --html report.html     # every run of the chain, as a web page
    pipetask run -b repo -i raw -o u/me/ccd -p ProcessCcd.yaml --reuse-from u/me/ccd --explain   # redo what changed
    pipetask rerun -b repo --from-run u/me/ccd/20261120T010203Z -o u/me/ccd-again            # re-create a run
    pipetask diff-runs -b repo u/me/ccd/20261120T010203Z u/me/ccd-again/20261121T090000Z      # compare by checksum

``-o OUTPUT`` is a CHAINED collection: each run prepends a new timestamped RUN (``OUTPUT/<UTC time>``)
to it, followed by the inputs; ``--output-run`` names the RUN explicitly; ``--extend-run`` writes
into the chain's newest RUN again.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import click

from butler import Butler, CollectionType
from butler.cli_utils import (
    ErrorHandlingCommand,
    configure_logging,
    log_level_option,
    output,
    split_commas,
)
from butler.errors import ButlerError, MissingCollectionError

from .errors import NothingToDoError, PipelineError
from .execute.executors import EXECUTORS
from .pipeline import Pipeline
from .pipeline_graph import PipelineGraph

__all__ = ["cli", "main"]


class _PipetaskCommand(ErrorHandlingCommand):
    handled_errors: ClassVar[tuple[type[BaseException], ...]] = (ButlerError, PipelineError)


class _PipetaskGroup(click.Group):
    command_class = _PipetaskCommand


def _parse_overrides(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[tuple[str, str, str]]:
    """``-c label:key=value`` -> (label, key, value)."""
    out = []
    for value in values:
        label, sep, rest = value.partition(":")
        key, eq, text = rest.partition("=")
        if not sep or not eq or not label or not key:
            raise click.BadParameter(f"{value!r} is not of the form LABEL:KEY=VALUE.", ctx=ctx, param=param)
        out.append((label.strip(), key.strip(), text.strip()))
    return out


def _parse_config_files(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[tuple[str, str]]:
    """``-C label:file.yaml`` -> (label, path)."""
    out = []
    for value in values:
        label, sep, path = value.partition(":")
        if not sep or not label or not path:
            raise click.BadParameter(f"{value!r} is not of the form LABEL:FILE.", ctx=ctx, param=param)
        out.append((label.strip(), path.strip()))
    return out


def _pipeline_options(f: Any) -> Any:
    f = click.option("--pipeline", "-p", "pipeline_uri", default=None, help="Pipeline YAML file (FILE.yaml#label,subset selects tasks).")(f)
    f = click.option(
        "--config", "-c", "overrides", multiple=True, callback=_parse_overrides, metavar="LABEL:KEY=VALUE",
        help="Config override for one task (repeatable).",
    )(f)
    f = click.option(
        "--config-file", "-C", "config_files", multiple=True, callback=_parse_config_files, metavar="LABEL:FILE",
        help="YAML file of config overrides for one task (repeatable).",
    )(f)
    return f


def _load_pipeline(pipeline_uri: str | None, overrides: Sequence[tuple[str, str, str]], config_files: Sequence[tuple[str, str]]) -> Pipeline:
    if pipeline_uri is None:
        raise click.UsageError("give a pipeline with -p/--pipeline (or a saved graph with -g for run).")
    pipeline = Pipeline.from_file(pipeline_uri)
    for label, path in config_files:
        pipeline.add_config_file(label, path)
    for label, key, value in overrides:
        pipeline.add_config_override(label, key, value)
    return pipeline


def _butler_options(f: Any) -> Any:
    f = click.option("--butler-config", "-b", "repo", required=True, help="Repository root (or its butler.yaml).")(f)
    f = click.option("--input", "-i", "inputs", multiple=True, callback=split_commas, help="Input collections (repeatable or comma-separated).")(f)
    f = click.option("--output", "-o", "output", default=None, help="Output CHAINED collection (new timestamped RUN + inputs).")(f)
    f = click.option("--output-run", default=None, help="Output RUN collection (default: OUTPUT/<UTC time>).")(f)
    f = click.option("--data-query", "-d", "where", default="", help="Where-expression selecting the data IDs.")(f)
    f = click.option("--extend-run", is_flag=True, help="Write into the newest RUN of --output again (resume, add tasks).")(f)
    f = click.option("--skip-existing", is_flag=True, help="Skip quanta whose outputs already exist in the output run.")(f)
    f = click.option("--skip-existing-in", multiple=True, callback=split_commas, help="Skip quanta whose outputs exist in these collections.")(f)
    f = click.option("--clobber-outputs", is_flag=True, help="Overwrite outputs of quanta that did not finish.")(f)
    f = click.option("--save-qgraph", "-q", "save_qgraph", default=None, help="Save the quantum graph to this file.")(f)
    return f


def _reuse_options(f: Any) -> Any:
    f = click.option("--explain", is_flag=True,
                     help="With --reuse-from: print per task how many quanta are reused and why each other one runs.")(f)
    f = click.option("--reuse-from", multiple=True, callback=split_commas, metavar="RUN",
                     help="Reuse the quanta of this run (or chain) whose task code, config and input checksums are "
                          "unchanged: their outputs are tagged into OUTPUT_RUN/reused, not recomputed.")(f)
    return f


def _resolve_collections(
    butler: Butler, inputs: Sequence[str], output: str | None, output_run: str | None, extend_run: bool
) -> tuple[list[str], str]:
    """The input collections to search and the output RUN, from -i/-o/--output-run/--extend-run."""
    registry = butler.registry
    previous: list[str] = []
    if output is not None:
        try:
            if registry.get_collection_type(output) is not CollectionType.CHAINED:
                raise click.UsageError(f"--output {output!r} exists and is not a CHAINED collection; use --output-run.")
            previous = list(registry.get_collection_chain(output))
        except MissingCollectionError:
            previous = []
    if extend_run:
        if output_run is None:
            runs = [c for c in previous if registry.get_collection_type(c) is CollectionType.RUN]
            if not runs:
                raise click.UsageError("--extend-run needs an existing --output chain with a RUN, or --output-run.")
            output_run = runs[0]
        elif registry._collections.find(output_run) is None:  # resuming a run killed before it was registered
            if not registry.db.writeable:
                raise click.UsageError(f"--extend-run: output run {output_run!r} does not exist.")
            click.echo(f"Output run {output_run!r} does not exist yet; starting it.", err=True)
            registry.register_run(output_run)
    elif output_run is None:
        if output is None:
            raise click.UsageError("give --output (a chain) or --output-run.")
        output_run = f"{output}/{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    elif registry._collections.find(output_run) is not None:
        raise click.UsageError(f"output run {output_run!r} already exists; use --extend-run to add to it.")
    search = list(inputs) or [c for c in previous if c != output_run]
    if not search and not extend_run:
        raise click.UsageError("give the input collections with -i/--input.")
    return search, output_run


def _update_chain(
    butler: Butler, output: str | None, output_run: str, inputs: Sequence[str], tagged: Sequence[str] = ()
) -> None:
    """Put the output run (then the ``tagged`` collections: reused outputs) first in the ``-o`` chain."""
    if output is None:
        return
    registry = butler.registry
    registry.register_run(output_run)
    for name in tagged:
        registry.register_collection(name, CollectionType.TAGGED)
    previous: list[str] = []
    if registry._collections.find(output) is not None:
        previous = list(registry.get_collection_chain(output))
    first = [output_run, *tagged]
    children = first + [c for c in previous if c not in first]
    children += [c for c in inputs if c not in children]
    butler.collection_chain(output, children)


def _build(
    butler: Butler, pipeline_graph: PipelineGraph, *, inputs: Sequence[str], output_run: str, where: str,
    skip_existing: bool, skip_existing_in: Sequence[str], extend_run: bool, clobber: bool, progress: bool,
    reuse_from: Sequence[str] = (), explain: bool = False,
) -> Any:
    from .builder import build_quantum_graph

    skip = list(skip_existing_in) + ([output_run] if skip_existing else [])
    search = list(inputs) + ([output_run] if extend_run and output_run not in inputs else [])
    try:
        qgraph, report = build_quantum_graph(
            pipeline_graph, butler, input_collections=search, output_run=output_run, where=where,
            skip_existing_in=skip or None, clobber_outputs=clobber, reuse_from=reuse_from or None, progress=progress,
        )
    except NothingToDoError as err:  # a resumed run that already finished is a success
        click.echo(f"Nothing to do: {err}")
        sys.exit(0)
    click.echo(str(report), err=True)
    if reuse_from:
        click.echo(f"{report.reused} quanta reused from {', '.join(reuse_from)}; {len(qgraph)} to run.", err=True)
    if explain:
        click.echo(report.explain_reuse())
    return qgraph


def _reused_tagged(graph: Any) -> list[str]:
    """The TAGGED collection of a graph's reused outputs, if it reuses any."""
    reuse = graph.metadata.get("reuse") or {}
    return [reuse["collection"]] if reuse.get("datasets") else []


@click.group(cls=_PipetaskGroup, context_settings={"help_option_names": ["-h", "--help"]})
@log_level_option
@click.pass_context
def cli(ctx: click.Context, log_level: str) -> None:
    """Build and run pipelines of PipelineTasks on a Butler Pipelines repository."""
    configure_logging(ctx, log_level, logger="")


def main() -> None:
    """Entry point of the ``pipetask`` console script."""
    cli(prog_name="pipetask")


@cli.command()
@_pipeline_options
@click.option("--show", "show", multiple=True, type=click.Choice(["pipeline", "graph", "config"]), help="What to print.")
@click.option("--pipeline-dot", type=click.Path(dir_okay=False), help="Write the pipeline graph as Graphviz dot.")
@click.option("--pipeline-mermaid", type=click.Path(dir_okay=False), help="Write the pipeline graph as Mermaid text.")
def build(pipeline_uri: str | None, overrides: Any, config_files: Any, show: Sequence[str], pipeline_dot: str | None, pipeline_mermaid: str | None) -> None:
    """Read, configure and validate a pipeline; show or export it."""
    pipeline = _load_pipeline(pipeline_uri, overrides, config_files)
    pipeline_graph = pipeline.to_graph()
    if "pipeline" in show:
        click.echo(pipeline.to_yaml())
    if "graph" in show:
        click.echo(pipeline_graph.show())
    if "config" in show:
        import yaml

        for label, node in pipeline_graph.tasks.items():
            click.echo(yaml.safe_dump({label: node.config.to_dict()}, sort_keys=False).rstrip())
    if pipeline_dot:
        Path(pipeline_dot).write_text(pipeline_graph.to_dot())
    if pipeline_mermaid:
        Path(pipeline_mermaid).write_text(pipeline_graph.to_mermaid())
    if not (show or pipeline_dot or pipeline_mermaid):
        click.echo(f"Pipeline is valid: {len(pipeline_graph.tasks)} task(s): {', '.join(pipeline_graph.tasks)}.")


@cli.command()
@_pipeline_options
@_butler_options
@click.option("--show", "show", multiple=True, type=click.Choice(["summary", "quanta"]), default=("summary",), help="What to print.")
@_reuse_options
def qgraph(pipeline_uri: str | None, overrides: Any, config_files: Any, repo: str, inputs: Sequence[str], output: str | None,
           output_run: str | None, where: str, extend_run: bool, skip_existing: bool, skip_existing_in: Sequence[str],
           clobber_outputs: bool, save_qgraph: str | None, show: Sequence[str], reuse_from: Sequence[str], explain: bool) -> None:
    """Build the quantum graph of a pipeline over a repository (and save it with -q)."""
    if explain and not reuse_from:
        raise click.UsageError("--explain explains --reuse-from; give the run to reuse quanta from.")
    pipeline_graph = _load_pipeline(pipeline_uri, overrides, config_files).to_graph()
    with Butler(repo, writeable=False) as butler:
        search, run = _resolve_collections(butler, inputs, output, output_run, extend_run)
        graph = _build(butler, pipeline_graph, inputs=search, output_run=run, where=where, skip_existing=skip_existing,
                       skip_existing_in=skip_existing_in, extend_run=extend_run, clobber=clobber_outputs, progress=sys.stderr.isatty(),
                       reuse_from=reuse_from, explain=explain)
    if save_qgraph:
        graph.save(save_qgraph)
    _show_graph(graph, show)


def _show_graph(graph: Any, show: Sequence[str]) -> None:
    if "summary" in show:
        output("table", [{"task": label, "quanta": n} for label, n in graph.summary().items()])
        click.echo(f"{len(graph)} quanta in total; output run {graph.output_run!r}.")
    if "quanta" in show:
        output("table", [{"task": q.task_label, "quantum": str(q.id), "data ID": str(dict(q.data_id.required))} for q in graph])


@cli.command()
@_pipeline_options
@_butler_options
@click.option("--qgraph", "-g", "load_qgraph", default=None, type=click.Path(exists=True, dir_okay=False), help="Run this saved quantum graph.")
@click.option("--jobs", "-j", default=None, type=click.IntRange(min=1),
              help="Number of worker processes (default 1; with --executor parsl, per node: the site file's).")
@click.option("--executor", type=click.Choice(EXECUTORS), default=None,
              help="How quanta run: in this process, in a pool of -j processes, or as Parsl apps on a --site "
                   "(default: parsl with --site, else pool with -j > 1, else serial).")
@click.option("--site", default=None, metavar="SITE.yaml",
              help="Parsl site file (workers, retries, Slurm jobs...), or a shipped one: local, slurm (default local).")
@click.option("--register-dataset-types", is_flag=True, help="Register the pipeline's output dataset types if needed.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed quantum.")
@_reuse_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Fail a quantum that runs longer (its descendants are blocked, the rest go on); with -j N a worker "
                   "stuck in native code is killed and replaced.")
def run(pipeline_uri: str | None, overrides: Any, config_files: Any, repo: str, inputs: Sequence[str], output: str | None,
        output_run: str | None, where: str, extend_run: bool, skip_existing: bool, skip_existing_in: Sequence[str],
        clobber_outputs: bool, save_qgraph: str | None, load_qgraph: str | None, jobs: int | None, executor: str | None,
        site: str | None, register_dataset_types: bool, fail_fast: bool, reuse_from: Sequence[str], explain: bool,
        timeout: float | None) -> None:
    """Build (or load) a quantum graph and execute it; exit code 1 if any quantum failed."""
    from .quantum_graph import QuantumGraph

    if explain and not reuse_from:
        raise click.UsageError("--explain explains --reuse-from; give the run to reuse quanta from.")
    if load_qgraph and reuse_from:
        raise click.UsageError("--reuse-from applies when the graph is built: pass it to `pipetask qgraph` instead.")
    site_config = _site_config(executor, jobs, site)
    if timeout is not None and site_config is not None:
        raise click.UsageError("--timeout is for the serial and pool executors; with parsl, set the walltime of the site's jobs.")
    with Butler(repo) as butler:
        if load_qgraph:
            graph = QuantumGraph.load(load_qgraph, universe=butler.dimensions)
            search = graph.input_collections
            inputs = inputs or search
        else:
            pipeline_graph = _load_pipeline(pipeline_uri, overrides, config_files).to_graph()
            search, run_name = _resolve_collections(butler, inputs, output, output_run, extend_run)
            graph = _build(butler, pipeline_graph, inputs=search, output_run=run_name, where=where, skip_existing=skip_existing,
                           skip_existing_in=skip_existing_in, extend_run=extend_run, clobber=clobber_outputs,
                           progress=sys.stderr.isatty(), reuse_from=reuse_from, explain=explain)
            if save_qgraph:
                graph.save(save_qgraph)
        _check_dataset_types(butler, graph.pipeline_graph, register_dataset_types)
        _update_chain(butler, output, graph.output_run, search, _reused_tagged(graph))
        _execute(butler, graph, executor=executor, jobs=jobs, site=site_config, fail_fast=fail_fast, clobber=clobber_outputs,
                 timeout=timeout)


def _site_config(executor: str | None, jobs: int | None, site: str | None) -> Any:
    """Check the executor options; load the Parsl site file (before any graph is built)."""
    from .execute import load_site, require_parsl

    if executor == "serial" and jobs is not None and jobs > 1:
        raise click.UsageError(f"--executor serial runs one quantum at a time; use --executor pool or parsl with -j {jobs}.")
    if site is not None and executor in ("serial", "pool"):
        raise click.UsageError(f"--site is for --executor parsl, not {executor}.")
    if executor == "parsl" or site is not None:
        require_parsl()
        return load_site(site or "local")
    return None


def _execute(butler: Butler, graph: Any, *, executor: str | None, jobs: int | None, site: Any, fail_fast: bool, clobber: bool,
             timeout: float | None = None) -> None:
    """Execute a graph, print the report, and exit with code 1 if any quantum failed."""
    from .execute import execute_graph

    report = execute_graph(
        graph, butler, executor=executor, jobs=jobs, site=site, fail_fast=fail_fast, clobber=clobber, progress=sys.stderr.isatty(),
        timeout=timeout,
    )
    click.echo(str(report))
    if not report.ok:
        sys.exit(1)


def _check_dataset_types(butler: Butler, pipeline_graph: PipelineGraph, register: bool) -> None:
    missing = [
        name for name in list(pipeline_graph.dataset_types) + list(pipeline_graph.provenance_dataset_types)
        if butler.registry._datasets.find_type(name) is None
    ]
    if missing and not register:
        raise click.ClickException(
            f"dataset type(s) {', '.join(sorted(missing))} are not registered; rerun with --register-dataset-types."
        )
    if missing:
        pipeline_graph.register_dataset_types(butler)


@cli.command()
@click.option("--butler-config", "-b", "repo", required=True, help="Repository root.")
@click.option("--qgraph", "-g", "load_qgraph", default=None, type=click.Path(exists=True, dir_okay=False), help="The graph that was run.")
@click.option("--output-run", "output_runs", multiple=True, callback=split_commas,
              help="The RUN collection the graph wrote (default: the graph's).  With --html: RUN or CHAINED collections "
                   "(repeatable or comma-separated), a chain standing for each of its RUNs with executed quanta.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False), metavar="OUT.html",
              help="Write a self-contained HTML report instead: pipeline graph, quanta and wall times per task, and the "
                   "science sections of installed packages (PSF FWHM, background matching, DIA sources and cut-outs, "
                   "difference-image noise); exit code 1 if a section failed.")
def report(repo: str, load_qgraph: str | None, output_runs: Sequence[str], fmt: str, html_path: str | None) -> None:
    """Report succeeded / failed / not-run quanta per task label of a run, and why each failed quantum failed;
    or, with --html, write a web page about runs."""
    from .execute.report import format_data_id, report_from_registry

    if len(output_runs) > 1 and html_path is None:
        raise click.UsageError("give one --output-run (several runs are for --html reports).")
    output_run = output_runs[0] if output_runs else None
    with Butler(repo, writeable=False) as butler:
        graph = None
        if load_qgraph:
            from .quantum_graph import QuantumGraph

            graph = QuantumGraph.load(load_qgraph, universe=butler.dimensions)
        if graph is None and output_run is None:
            raise click.UsageError("give the run with --output-run, or the graph with -g.")
        if html_path is not None:
            _write_html_report(butler, list(output_runs) or [graph.output_run], html_path)
            return
        rows = report_from_registry(butler, graph=graph, output_run=output_run)
    if fmt == "json":
        output(fmt, rows, empty="No quanta found in that run.")
        return
    failures = [{"task": row["task"], **failure} for row in rows for failure in row.pop("failures")]
    output(fmt, rows, empty="No quanta found in that run.")
    if failures:
        click.echo("\nFailed quanta:")
        output(fmt, [
            {"task": f["task"], "data ID": format_data_id(f["data_id"]), "reason": f["reason"]}
            for f in failures
        ])  # fmt: skip


def _write_html_report(butler: Butler, collections: Sequence[str], path: str) -> None:
    """Render and write the HTML report; say what it holds; exit with code 1 if a section failed."""
    from .html_report import render_html_report

    html_report = render_html_report(butler, collections)
    html_report.write(path)
    data = html_report.data
    click.echo(f"Wrote {path}: report of {len(data['runs'])} run(s) ({', '.join(data['runs'])}) in {data['seconds']:.1f} s.")
    for key in html_report.statuses("skipped"):
        click.echo(f"  left out {key}: {data['sections'][key]['reason']}")
    failed = html_report.statuses("failed")
    for key in failed:
        click.echo(f"  FAILED {key}: {data['sections'][key]['error']}", err=True)
    if failed:
        sys.exit(1)


@cli.command()
@click.option("--butler-config", "-b", "repo", required=True, help="Repository root (or its butler.yaml).")
@click.option("--from-run", required=True, help="The RUN collection to re-create.")
@click.option("--output", "-o", "output", default=None, help="Output CHAINED collection (new timestamped RUN + the exact inputs).")
@click.option("--output-run", default=None, help="Output RUN collection (default: OUTPUT/<UTC time>).")
@click.option("--jobs", "-j", default=None, type=click.IntRange(min=1), help="Number of worker processes (default 1).")
@click.option("--executor", type=click.Choice(EXECUTORS), default=None, help="How quanta run (as for run).")
@click.option("--site", default=None, metavar="SITE.yaml", help="Parsl site file, or a shipped one: local, slurm.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed quantum.")
def rerun(repo: str, from_run: str, output: str | None, output_run: str | None, jobs: int | None, executor: str | None,
          site: str | None, fail_fast: bool) -> None:
    """Re-create a run from its recorded provenance: the same pipeline and configs, run on exactly the datasets
    its quanta read (tagged into OUTPUT_RUN/inputs), into a new run; compare with `pipetask diff-runs`."""
    from .rerun import build_rerun_graph

    site_config = _site_config(executor, jobs, site)
    with Butler(repo) as butler:
        _, run_name = _resolve_collections(butler, [from_run], output, output_run, False)
        graph, report, inputs = build_rerun_graph(butler, from_run, run_name, progress=sys.stderr.isatty())
        click.echo(str(report), err=True)
        _check_dataset_types(butler, graph.pipeline_graph, True)
        _update_chain(butler, output, graph.output_run, [inputs])
        _execute(butler, graph, executor=executor, jobs=jobs, site=site_config, fail_fast=fail_fast, clobber=False)


@cli.command("diff-runs")
@click.option("--butler-config", "-b", "repo", required=True, help="Repository root.")
@click.argument("run1")
@click.argument("run2")
@click.option("--ignore", multiple=True, callback=split_commas, metavar="GLOB",
              help="Dataset types to leave out (repeatable, comma-separated globs); default '*_metadata,*_log': task "
                   "metadata and logs hold timings and hosts, so they differ between any two runs.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def diff_runs(repo: str, run1: str, run2: str, ignore: Sequence[str], fmt: str) -> None:
    """Compare the datasets of RUN1 and RUN2 by checksum, listing by dataset type and data ID those only in one
    run or different in both; exit code 0 when they are identical, 1 when they differ (like diff).  A run's
    datasets include the outputs it reused (its RUN/reused collection, see run --reuse-from)."""
    from butler.run_diff import DEFAULT_IGNORE
    from butler.run_diff import diff_runs as compare

    from .reuse import reused_collection

    with Butler(repo, writeable=False) as butler:
        registry = butler.registry

        def side(run: str) -> list[str]:
            tagged = reused_collection(run)
            return [run] + ([tagged] if registry._collections.find(tagged) is not None else [])

        differences = compare(registry, side(run1), side(run2), ignore=list(ignore) or DEFAULT_IGNORE)
    output(fmt, [d.to_dict() for d in differences])
    if differences:
        if fmt == "table":
            click.echo(f"{len(differences)} dataset(s) differ between {run1!r} and {run2!r}.", err=True)
        sys.exit(1)
    if fmt == "table":
        click.echo(f"{run1!r} and {run2!r} hold identical datasets.", err=True)
