"""Secure operations run inside a party's MPyC worker.

Every function here is called by all parties in the same order with the same public
arguments (MPyC matches messages by program counter). Each protocol step's docstring
states what it opens and to whom; nothing is opened except through
:func:`ppa_kernel.party.secure.openings.reveal`.
"""
