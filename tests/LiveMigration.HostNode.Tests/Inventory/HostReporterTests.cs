using Akka.Configuration;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Inventory;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Tests.Inventory;

/// <summary>
/// A host's report is delivered, not sent: the reporter sends it again until the inventory acknowledges it. A host of
/// hundreds of VMs sends its whole view in parts that fit a remote message, then only what changed.
/// </summary>
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
        inventory.LastSender.Tell(new ReportAcknowledged(ReportAcknowledged.HostReport, host.At, host.Epoch, host.Seq), inventory.Ref);
        // a few stale messages may be in flight from the timer that fired just before; after that, silence
        inventory.ReceiveWhile(TimeSpan.FromMilliseconds(500), m => m);
        inventory.ExpectNoMsg(HostReporter.MaxResendDelay + TimeSpan.FromSeconds(1));
    }

    [Fact]
    public async Task A_host_of_hundreds_of_vms_reports_them_in_parts_that_fit_a_remote_message_then_only_what_changed_and_all_again_on_a_resync()
    {
        var pool = new StoragePool([_a]);
        _hypervisor = new SimHypervisor(_host, pool);
        var vms = new List<VmId>();
        for (var i = 0; i < 400; i++)
        {
            var image = ImageId.New();
            VolumeRef? parent = null;
            foreach (var volume in new[] { VolumeId.New(), VolumeId.New(), VolumeId.New() })
            {
                await _a.CreateVolumeAsync(new NewVolume(image, volume, VolumeFormat.Cow, 1L << 20, parent));
                parent = new VolumeRef(_a.Id, volume);
            }
            var vm = await _hypervisor.StartVmAsync(new VmSpec(VmId.New(), $"tenant-vm-{i:D4}", [await pool.ResolveChainAsync(_a.Id, image)]));
            vms.Add(vm.Id);
        }
        var inventory = CreateTestProbe();
        var reporter = Sys.ActorOf(HostReporter.Props("host-1", spmCapable: true, _hypervisor, pool, inventory.Ref));

        // the whole view: several parts, numbered from 0 in one chain, each within a remote message's frame as the protocol
        // serializer writes it, together naming every VM once; the last says the view ends
        var serializer = new Shared.Serialization.ProtocolSerializer((Akka.Actor.ExtendedActorSystem)Sys);
        var whole = ReceiveReports(inventory, until: p => p.WholeEnds);
        Assert.True(whole.Count > 1, $"{whole.Count} part(s)");
        Assert.All(whole, p => Assert.True(serializer.ToBinary(p).Length < 128_000, $"part {p.Seq}: {serializer.ToBinary(p).Length} bytes"));
        Assert.Equal(Enumerable.Range(0, whole.Count).Select(n => (long)n), whole.Select(p => p.Seq));
        Assert.All(whole, p => Assert.True(p.Whole && p.Epoch == whole[0].Epoch));
        Assert.Equal(vms.Select(v => v.Value).Order(), whole.SelectMany(p => p.Vms).Select(v => v.Id.Value).Order());
        var last = whole[^1];
        reporter.Tell(new ReportAcknowledged(ReportAcknowledged.HostReport, last.At, last.Epoch, last.Seq), inventory.Ref);

        // one VM stops: the next part names only it (a part of the whole view sent again before the receipt is skipped)
        await _hypervisor.StopVmAsync(vms[7]);
        var change = ReceiveReports(inventory, until: p => !p.Whole)[^1];
        Assert.Equal((whole[0].Epoch, last.Seq + 1), (change.Epoch, change.Seq));
        Assert.Equal((vms[7], false), (Assert.Single(change.Vms).Id, change.Vms[0].Running));
        Assert.Empty(change.Gone!);

        // the inventory recovered and does not know the chain: the whole view again, in a new chain
        reporter.Tell(new ReportAcknowledged(ReportAcknowledged.HostReport, change.At, change.Epoch, change.Seq, Resync: true), inventory.Ref);
        var again = ReceiveReports(inventory, until: p => p.WholeEnds && p.Epoch != whole[0].Epoch);
        var newChain = again.Where(p => p.Epoch != whole[0].Epoch).ToList();
        Assert.Equal(0, newChain[0].Seq);
        Assert.Equal(vms.Select(v => v.Value).Order(), newChain.SelectMany(p => p.Vms).Select(v => v.Id.Value).Order());
    }

    /// <summary>The host reports the probe gets until one matches (domain reports skipped).</summary>
    private static List<HostStatusReport> ReceiveReports(Akka.TestKit.TestProbe inventory, Func<HostStatusReport, bool> until)
    {
        var parts = new List<HostStatusReport>();
        while (true)
        {
            var message = inventory.ReceiveOne(TimeSpan.FromSeconds(10)) ?? throw new TimeoutException($"no report after {parts.Count} part(s)");
            if (message is not HostStatusReport part) continue;
            parts.Add(part);
            if (until(part)) return parts;
        }
    }
}
