"""Run-folder contracts: the file names every stage writes and reads, their JSON schemas, and
:func:`detect`, which tells what kind of folder a path is.

Every writer and every reader imports its file names from :mod:`segsynth.artifacts.names`, so a
folder's layout is declared once; :mod:`segsynth.artifacts.schemas` holds the pydantic models of
the JSON records, and :mod:`segsynth.artifacts.detect` recognises a folder by what it holds.
"""
