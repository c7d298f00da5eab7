SELECT COUNT(*) FILTER (WHERE amount > 10) FROM bank.loans
