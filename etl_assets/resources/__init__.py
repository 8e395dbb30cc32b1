"""Sources and targets, each a ConfigurableResource."""
