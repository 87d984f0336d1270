# Loads the WSGI callable named by an app spec (module part and attribute part split by the server).
import ast
import importlib
import importlib.util
import os
import sys


# Without a venv the embedding has no interpreter binary to name, and CPython leaves
# sys.executable empty; multiprocessing's spawn and forkserver start it, so name the one this
# libpython belongs to.
if not sys.executable:
    _exe = os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])
    if os.access(_exe, os.X_OK):
        sys.executable = sys._base_executable = _exe


def _resolve(obj, dotted, where):
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"{where} has no attribute {dotted!r}") from None
    return obj


def load(module, attr):
    if module.endswith(".py"):
        path = os.path.abspath(module)
        name = os.path.splitext(os.path.basename(path))[0]
        sys.path.insert(0, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    try:
        expr = ast.parse(attr.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"{attr!r} is not a Python name or call") from None
    if isinstance(expr, ast.Call):
        name = ast.unparse(expr.func)
        try:
            args = [ast.literal_eval(a) for a in expr.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in expr.keywords}
        except ValueError:
            raise ValueError(f"{attr!r}: factory arguments must be Python literals") from None
        factory = _resolve(mod, name, f"module {module!r}")
        if not callable(factory):
            raise TypeError(f"{module}:{name} is not callable (it is {type(factory).__name__})")
        app = factory(*args, **kwargs)
        what = f"{module}:{attr} returned"
    else:
        app = _resolve(mod, ast.unparse(expr), f"module {module!r}")
        what = f"{module}:{attr} is"
    if not callable(app):
        raise TypeError(f"{what} not a WSGI callable (it is {type(app).__name__})")
    return app
