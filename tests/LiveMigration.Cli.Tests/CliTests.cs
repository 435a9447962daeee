using System.Text.Json;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// <c>lsm</c> run as a process against a real Coordinator and HostNode: what it prints, in tables and JSON,
/// and the exit code a script sees (0 ok, 1 failed, 2 bad input, 3 API unreachable).
/// </summary>
public sealed class CliTests(ClusterFixture cluster) : IClassFixture<ClusterFixture>
{
    private Task<CliResult> Lsm(params string[] arguments) => CliProcess.RunAsync(cluster.Api, arguments);

    [Fact]
    public async Task Cluster_show_lists_the_coordinator_and_the_host_up_as_a_table_and_as_json()
    {
        var table = await Lsm("cluster", "show");
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Equal(2, table.Stdout.Split('\n').Count(l => l.Contains("akka.tcp://lsm@127.0.0.1:") && l.Contains(" up ")));
        Assert.Contains($"akka.tcp://lsm@127.0.0.1:{cluster.Cluster.CoordinatorPort}", table.Stdout);
        Assert.Contains("leader", table.Stdout);

        var json = await Lsm("cluster", "show", "--json");
        Assert.True(json.ExitCode == 0, json.ToString());
        var members = JsonDocument.Parse(json.Stdout).RootElement.GetProperty("members").EnumerateArray().ToList();
        Assert.Equal(2, members.Count);
        Assert.All(members, m => Assert.Equal("up", m.GetProperty("status").GetString()));
        Assert.Contains(members, m => m.GetProperty("roles").EnumerateArray().Any(r => r.GetString() == "coordinator"));
        Assert.Contains(members, m => m.GetProperty("roles").EnumerateArray().Any(r => r.GetString() == "spm"));
    }

    [Fact]
    public async Task Sharding_regions_names_the_migration_region()
    {
        var result = await Lsm("cluster", "sharding", "regions", "--json");
        Assert.True(result.ExitCode == 0, result.ToString());
        var regions = JsonDocument.Parse(result.Stdout).RootElement.GetProperty("regions").EnumerateArray().ToList();
        var migration = Assert.Single(regions, r => r.GetProperty("typeName").GetString() == "migration");
        Assert.Equal(JsonValueKind.Null, migration.GetProperty("error").ValueKind);

        var table = await Lsm("cluster", "sharding", "regions");
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Contains("migration", table.Stdout);
    }

    [Fact]
    public async Task Domains_hosts_and_vms_show_what_the_host_reported()
    {
        var domains = await Lsm("domains");
        Assert.True(domains.ExitCode == 0, domains.ToString());
        Assert.Contains("domain-a", domains.Stdout);
        Assert.Contains("domain-b", domains.Stdout);
        Assert.Contains(cluster.B.Id.ToString(), domains.Stdout);

        var domainsJson = JsonDocument.Parse((await Lsm("domains", "--json")).Stdout).RootElement.GetProperty("domains");
        Assert.Equal(2, domainsJson.GetArrayLength());

        var hosts = await Lsm("hosts", "--json");
        Assert.True(hosts.ExitCode == 0, hosts.ToString());
        var host = Assert.Single(JsonDocument.Parse(hosts.Stdout).RootElement.GetProperty("hosts").EnumerateArray());
        Assert.Equal("host-1", host.GetProperty("hostId").GetString());
        Assert.Equal("up", host.GetProperty("memberStatus").GetString());
        Assert.True(host.GetProperty("spmCapable").GetBoolean());

        var vms = await Lsm("vms");
        Assert.True(vms.ExitCode == 0, vms.ToString());
        Assert.Contains(cluster.Vm.ToString(), vms.Stdout);
        Assert.Contains(cluster.Image.ToString(), vms.Stdout);
        Assert.Contains("cli-vm", vms.Stdout);
    }

    [Fact]
    public async Task Bad_input_is_refused_with_exit_2_and_a_message_before_any_request()
    {
        // Against an address where nothing listens: a request would have given exit 3.
        var nowhere = "http://127.0.0.1:1";
        var vm = await CliProcess.RunAsync(nowhere, "migrate", "my-vm", "--to", "domain-b");
        Assert.Equal(2, vm.ExitCode);
        Assert.Contains("VM must be a UUID", vm.Stderr);

        var rate = await CliProcess.RunAsync(nowhere, "migrate", Guid.NewGuid().ToString(), "--to", "domain-b", "--bandwidth", "fast");
        Assert.Equal(2, rate.ExitCode);
        Assert.Contains("--bandwidth 'fast'", rate.Stderr);

        var id = await CliProcess.RunAsync(nowhere, "migration", "show", "42");
        Assert.Equal(2, id.ExitCode);
        Assert.Contains("migration id must be a UUID", id.Stderr);

        var address = await CliProcess.RunAsync(nowhere, "cluster", "down", "akka.tcp://other@127.0.0.1:4053");
        Assert.Equal(2, address.ExitCode);
        Assert.Contains("not a member address", address.Stderr);
    }

    [Fact]
    public async Task The_api_refuses_leaving_a_stranger_and_a_foreign_address()
    {
        var stranger = await Lsm("cluster", "leave", "akka.tcp://lsm@127.0.0.1:1");
        Assert.True(stranger.ExitCode == 1, stranger.ToString());
        Assert.Contains("is not a member", stranger.Stderr);
        Assert.DoesNotContain("   at ", stranger.Stderr);
    }

    [Fact]
    public async Task The_api_answers_400_with_a_message_for_an_address_that_is_not_of_this_cluster()
    {
        using var http = new HttpClient();
        foreach (var address in new[] { "akka.tcp://other@127.0.0.1:4053", "http://127.0.0.1:4053", "nonsense", "" })
        {
            using var response = await http.PostAsync($"{cluster.Api}/api/cluster/down",
                new StringContent(JsonSerializer.Serialize(new { address }), System.Text.Encoding.UTF8, "application/json"));
            var body = await response.Content.ReadAsStringAsync();
            Assert.True((int)response.StatusCode == 400, $"{address}: {(int)response.StatusCode} {body}");
            Assert.Contains("akka.tcp://lsm@host:port", JsonDocument.Parse(body).RootElement.GetProperty("message").GetString());
        }
    }

    [Fact]
    public async Task Showing_an_unknown_migration_fails_with_exit_1()
    {
        var result = await Lsm("migration", "show", Guid.NewGuid().ToString());
        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.Contains("404", result.Stderr);
    }

    [Fact]
    public async Task An_unreachable_api_gives_exit_3()
    {
        var result = await CliProcess.RunAsync(null, "cluster", "show", "--api", "http://127.0.0.1:1");
        Assert.Equal(3, result.ExitCode);
        Assert.Contains("cannot reach the Coordinator API", result.Stderr);
    }

    [Fact]
    public async Task Help_explains_commands_with_examples()
    {
        var root = await CliProcess.RunAsync(null, "--help");
        Assert.Equal(0, root.ExitCode);
        Assert.Contains("migrate", root.Stdout);
        var migrate = await CliProcess.RunAsync(null, "migrate", "--help");
        Assert.Equal(0, migrate.ExitCode);
        Assert.Contains("--bandwidth", migrate.Stdout);
        Assert.Contains("EXAMPLES", migrate.Stdout);
    }

    [Fact]
    public async Task Migrate_with_wait_moves_every_disk_of_the_vm_to_the_named_domain_and_exits_0()
    {
        var result = await Lsm("migrate", cluster.Vm.ToString(), "--to", "domain-b", "--strategy", "pre-copy", "--bandwidth", "200MiB/s", "--wait");
        Assert.True(result.ExitCode == 0, result + "\n" + cluster.LogTails());
        Assert.Contains("completed", result.Stdout);
        var id = result.Stdout.Split('\n')[0].Split(' ')[1];

        var shown = await Lsm("migration", "show", id, "--json");
        Assert.True(shown.ExitCode == 0, shown.ToString());
        var migration = JsonDocument.Parse(shown.Stdout).RootElement;
        Assert.Equal("completed", migration.GetProperty("status").GetString());
        var disk = Assert.Single(migration.GetProperty("disks").EnumerateArray());
        Assert.Equal(cluster.Image.ToString(), disk.GetProperty("image").GetString());
        Assert.Equal(cluster.B.Id.ToString(), disk.GetProperty("destination").GetString());

        // A finished migration cannot be cancelled: the API's conflict is exit 1 with its message.
        var cancel = await Lsm("migration", "cancel", id);
        Assert.True(cancel.ExitCode == 1, cancel.ToString());
    }
}
