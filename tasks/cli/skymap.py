"""``butler register-skymap``: define a skymap's tracts and patches in a repository.

::

    butler register-skymap repo -C repo_template/skymaps/simcam.yaml
    butler register-skymap repo -C rings.yaml -c name=rings_coarse -c pixel_scale=0.4
"""

from __future__ import annotations

import click

from butler import Butler
from butler.cli_utils import ErrorHandlingCommand

__all__ = ["commands", "register_skymap"]


@click.command("register-skymap", cls=ErrorHandlingCommand)
@click.argument("repo", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--config-file",
    "-C",
    "config_file",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="YAML skymap configuration (name, type, pixel_scale, patch_inner_dimensions, ...); see "
    "repo_template/skymaps/.",
)
@click.option(
    "--config",
    "-c",
    "config",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a configuration field (repeatable); values are YAML, keys may be dotted "
    "(tracts.0.radius=0.3, patch_inner_dimensions=[2000,2000]).",
)
@click.option("--run", default="skymaps", show_default=True, help="RUN collection for the skyMap dataset.")
def register_skymap(repo: str, config_file: str | None, config: tuple[str, ...], run: str) -> None:
    """Register the skymap a configuration defines in REPO: its skymap, tract and patch records (with
    sky regions) and a skyMap dataset.  Registering an identical skymap again changes nothing; a
    different configuration under a registered name is an error."""
    # Imported here so that loading the butler command line stays fast.
    from tasks.errors import SkyMapError
    from tasks.image.skymap import SkyMap, read_skymap_config

    if config_file is None and not config:
        raise SkyMapError(
            "give a skymap configuration with -C FILE (e.g. repo_template/skymaps/simcam.yaml) and/or "
            "fields with -c KEY=VALUE."
        )
    skymap = SkyMap.from_config(read_skymap_config(config_file, config))
    with Butler(repo) as butler:
        result = skymap.register(butler, run=run)
    what = f"skymap {result.name!r} ({skymap.config.type}, hash {result.hash[:12]})"
    if result.inserted:
        click.echo(
            f"Registered {what}: {result.num_tracts} tract(s), {result.num_patches} patch(es); "
            f"skyMap dataset in run {result.run!r}."
        )
    else:
        click.echo(
            f"{what[0].upper() + what[1:]} is already registered with the same configuration "
            f"({result.num_tracts} tract(s), {result.num_patches} patch(es)); nothing changed."
        )


commands = [register_skymap]
