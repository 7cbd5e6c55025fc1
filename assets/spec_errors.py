"""What Dagster shows for a dataset whose spec did not load: one asset `<file stem>/spec` in the dataset's own
group, its description the error (naming the file and the field), and a run of it fails with the same text. The
other datasets load as usual."""

import re
from pathlib import Path

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, Failure, asset


def error_group(source: str) -> str:
    """A Dagster-safe name for the dataset a broken spec file (or a missing name) stands for: its file stem."""
    return re.sub(r"[^A-Za-z0-9_]", "_", Path(source).stem) or "spec"


def build_spec_error(source: str, error: str) -> AssetsDefinition:
    group = error_group(source)

    @asset(key=AssetKey([group, "spec"]), group_name=group, kinds={"yaml"},
           description=f"This dataset's spec did not load, so none of its assets or sensors exist. Fix it and "
                       f"reload the code location. Error: {error}",
           metadata={"spec_error": error, "source": source})
    def spec_error(context: AssetExecutionContext):
        raise Failure(description=error, metadata={"source": source})

    return spec_error
