using LiveMigration.Shared.Hosting;
using Microsoft.Extensions.Configuration;

namespace LiveMigration.Shared.Tests.Hosting;

/// <summary>The cluster part of both executables' configuration, read the same way from one place.</summary>
public sealed class ClusterNodeSettingsTests
{
    private static IConfiguration Config(params (string Key, string Value)[] pairs) =>
        new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();

    [Fact]
    public void The_process_role_is_added_and_the_seeds_and_port_are_read()
    {
        var settings = ClusterNodeSettings.FromConfiguration(
            Config(("Cluster:Roles", "spm"), ("Cluster:Port", "4061"), ("Cluster:Seeds", "akka.tcp://lsm@127.0.0.1:4053, akka.tcp://lsm@127.0.0.1:4061")),
            "host");

        Assert.Equal(["host", "spm"], settings.Roles);
        Assert.Equal(4061, settings.Port);
        Assert.Equal(["akka.tcp://lsm@127.0.0.1:4053", "akka.tcp://lsm@127.0.0.1:4061"], settings.Seeds);
        Assert.Equal("127.0.0.1", settings.Hostname);
    }

    [Fact]
    public void Replaces_takes_one_address_of_this_node_s_protocol_and_never_its_own()
    {
        Assert.Equal("akka.tcp://lsm@127.0.0.1:4071", ClusterNodeSettings.FromConfiguration(
            Config(("Cluster:Port", "4072"), ("Cluster:Replaces", "akka.tcp://lsm@127.0.0.1:4071")), "coordinator").Replaces);
        Assert.Null(ClusterNodeSettings.FromConfiguration(Config(("Cluster:Port", "4072")), "coordinator").Replaces);
        Assert.Contains("own address", Assert.Throws<ArgumentException>(() => ClusterNodeSettings.FromConfiguration(
            Config(("Cluster:Port", "4071"), ("Cluster:Replaces", "akka.tcp://lsm@127.0.0.1:4071")), "coordinator")).Message);
        Assert.Contains("one address", Assert.Throws<ArgumentException>(() => ClusterNodeSettings.FromConfiguration(
            Config(("Cluster:Replaces", "akka.tcp://lsm@127.0.0.1:4071,akka.tcp://lsm@127.0.0.1:4073")), "coordinator")).Message);
        Assert.Contains("host-1", Assert.Throws<ArgumentException>(() => ClusterNodeSettings.FromConfiguration(
            Config(("Cluster:Replaces", "host-1")), "coordinator")).Message);
    }

    [Theory]
    [InlineData("Cluster:Port", "70000", "port '70000'")]
    [InlineData("Cluster:Seeds", "http://example:4053", "seed 'http://example:4053'")]
    [InlineData("Cluster:Roles", "Host;rm -rf", "role 'Host;rm -rf'")]
    public void Bad_values_are_refused_with_a_message_naming_them(string key, string value, string named)
    {
        var error = Assert.Throws<ArgumentException>(() => ClusterNodeSettings.FromConfiguration(Config((key, value)), "host"));
        Assert.Contains(named, error.Message);
    }
}
