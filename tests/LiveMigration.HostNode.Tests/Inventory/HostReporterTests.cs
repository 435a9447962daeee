using Akka.Configuration;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Inventory;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Tests.Inventory;

/// <summary>A host's report is delivered, not sent: the reporter sends it again until the inventory acknowledges it.</summary>
public sealed class HostReporterTests() : Akka.TestKit.Xunit2.TestKit(ConfigurationFactory.ParseString("""
    akka.actor.provider = cluster
    akka.remote.dot-netty.tcp.port = 0
    akka.remote.dot-netty.tcp.hostname = 127.0.0.1
    """)), IAsyncLifetime
{
    private readonly SimHost _host = new("reporter-host");
    private readonly SimStorageDomain _a = new(DomainId.New(), "a", 4L << 30);
    private SimHypervisor? _hypervisor;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_hypervisor is not null) await _hypervisor.DisposeAsync();
        await _host.DisposeAsync();
    }

    [Fact]
    public void A_report_the_inventory_does_not_acknowledge_is_sent_again_until_it_does_and_then_no_more()
    {
        var pool = new StoragePool([_a]);
        _hypervisor = new SimHypervisor(_host, pool);
        var inventory = CreateTestProbe();
        Sys.ActorOf(HostReporter.Props("host-1", spmCapable: true, _hypervisor, pool, inventory.Ref));

        var host = inventory.ExpectMsg<HostStatusReport>(TimeSpan.FromSeconds(10));
        var domains = inventory.ExpectMsg<DomainStatusReport>();
        Assert.Equal("host-1", domains.HostId);
        Assert.Equal(_a.Id, Assert.Single(domains.Domains).Id);

        // lost on the way: no receipt, so the same reports come again
        Assert.Equal(host, inventory.ExpectMsg<HostStatusReport>(HostReporter.FirstResendDelay * 3));
        Assert.Equal(domains, inventory.ExpectMsg<DomainStatusReport>());

        inventory.Reply(new ReportAcknowledged(ReportAcknowledged.DomainsReport, domains.At));
        inventory.LastSender.Tell(new ReportAcknowledged(ReportAcknowledged.HostReport, host.At), inventory.Ref);
        // a few stale messages may be in flight from the timer that fired just before; after that, silence
        inventory.ReceiveWhile(TimeSpan.FromMilliseconds(500), m => m);
        inventory.ExpectNoMsg(HostReporter.MaxResendDelay + TimeSpan.FromSeconds(1));
    }
}
