"""``dffs up``: the whole system on one host, as one supervised process tree."""
