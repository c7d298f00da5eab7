SELECT COUNT(*) FROM db.bank.loans
