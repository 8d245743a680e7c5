"""Site and user defaults for an installed lcc: Hydra also searches a config folder outside the package.

The folder is ``$LCC_CONFIG_DIR`` if set, else ``$XDG_CONFIG_HOME/lcc`` (``~/.config/lcc``). Its
``local/default.yaml`` is lcc's site defaults file (loaded by lcc's sweep.yaml as ``optional local: default``),
and it may add options to any config group (``model/mymodel.yaml``, ``launcher/mycluster.yaml``...). It is
searched after lcc's own configs, so a name lcc ships wins; it only applies to lcc's app (the search path
holds lcc's conf folder).
"""
import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def user_config_dir() -> Path:
    if os.environ.get("LCC_CONFIG_DIR"):
        return Path(os.environ["LCC_CONFIG_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser() / "lcc"


class LccSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        is_lcc = any(e.provider == "main" and e.path.replace("\\", "/").rstrip("/").endswith("lcc/conf")
                     for e in search_path.get_path())
        d = user_config_dir()
        if is_lcc and d.is_dir():
            search_path.append(provider="lcc-user", path=f"file://{d.resolve()}")
