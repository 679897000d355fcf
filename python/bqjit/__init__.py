from ._lib import BqjitError, Service, service  # noqa
