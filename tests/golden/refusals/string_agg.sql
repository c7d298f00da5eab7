SELECT STRING_AGG(region, ',') FROM bank.customers
