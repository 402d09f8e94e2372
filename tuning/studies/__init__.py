"""The built-in study files (`*.toml`, shipped as package data), and `python -m tuning.studies`,
which lists them with the local ones that override them: the same as `tuning studies`.

A package, not just a folder, so that `python -m` can run it; tuning.catalog finds the files
beside this one.
"""
