"""Transcriptions of authors' reference code, for the comparison scripts and tests only (not part of lcc).
Each module names the repository, commit, path and license of what it transcribes."""
