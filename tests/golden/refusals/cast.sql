SELECT SUM(CAST(amount AS INTEGER)) FROM bank.loans
