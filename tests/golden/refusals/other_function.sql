SELECT COUNT(*) FROM bank.customers WHERE current_setting('threads') = '4'
