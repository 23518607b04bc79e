use super::*;

#[test]
fn example_file_parses_and_validates() {
    let text = include_str!("../../../logsphere.example.toml");
    let cfg = Config::from_toml(text).expect("example config parses");
    cfg.validate().expect("example config is valid");
}

#[test]
fn unknown_key_is_named() {
    let err = Config::from_toml("[pg]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(format!("{err:#}").contains("listen_addr"), "{err:#}");
}

#[test]
fn bad_address_is_named() {
    let err = Config::from_toml("[http]\nlisten = \"nope\"\n").unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("listen"), "{msg}");
}

#[test]
fn public_listen_without_users_is_refused() {
    let cfg = Config::from_toml("[pg]\nlisten = \"0.0.0.0:5433\"\n").unwrap();
    let msg = format!("{:#}", cfg.validate().unwrap_err());
    assert!(
        msg.contains("pg.listen") && msg.contains("pg.users"),
        "{msg}"
    );
}
