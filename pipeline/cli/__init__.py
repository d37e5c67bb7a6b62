"""The ``samstream`` command. Sub-command modules are imported only when their command runs."""
