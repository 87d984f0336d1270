"""Loaded by file path (`sub/by_path.py:application`); reports where Python looks for modules."""
import os
import sys


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"by path; cwd={os.getcwd()}; prefix={sys.prefix}; path0={sys.path[0]}".encode()]
