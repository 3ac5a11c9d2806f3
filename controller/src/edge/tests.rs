use super::*;

#[test]
fn the_rejected_proxy_is_found_in_nginx_output() {
    let output = "nginx: [emerg] invalid burst value \"burst=0\" in /etc/nginx/conf.d/infrapilot-p1bd80a.conf:13\n\
                  nginx: configuration file /etc/nginx/nginx.conf test failed\n";
    assert_eq!(rejected_id(output).as_deref(), Some("p1bd80a"));
    assert_eq!(
        rejected_id("[emerg] in /etc/nginx/conf.d/infrapilot-00-edge.conf:3"),
        None
    );
    assert_eq!(rejected_id("[emerg] in /etc/nginx/nginx.conf:3"), None);
}

#[test]
fn nginx_messages_lose_timestamps_and_process_ids() {
    let output = "2026/11/22 05:28:16 [emerg] 18#18: invalid burst value \"burst=0\" in /etc/nginx/conf.d/infrapilot-p1.conf:13\n\
                  nginx: configuration file /etc/nginx/nginx.conf test failed\n";
    assert_eq!(
        nginx_message(output),
        "[emerg] invalid burst value \"burst=0\" in /etc/nginx/conf.d/infrapilot-p1.conf:13"
    );
}
