"""Everything specific to one public data set lives in its folder here, and only there."""
