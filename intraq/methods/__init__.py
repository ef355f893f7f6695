"""Every method a case can run, registered on import (`METHODS`); see `intraq.methods.base`.

A new baseline is one new module here that calls `register(...)`, plus its name in the import below.
"""

from intraq.methods import deepinversion, gdfq, intraq, qimera, real, squant  # noqa: F401  (registration)
from intraq.methods.base import METHODS, Method, MethodContext, MethodOutcome, get_method, register

__all__ = ["METHODS", "Method", "MethodContext", "MethodOutcome", "get_method", "register"]
