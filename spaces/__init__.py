"""The shipped search-space files, installed as the package data ``automq.spaces`` so that a bare space name
(``automq search mbv2_fmnist ...``) resolves in any installation, not only in a source checkout."""
