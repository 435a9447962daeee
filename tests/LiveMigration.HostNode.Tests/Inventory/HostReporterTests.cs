using Akka.Configuration;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Inventory;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.Shared.Migration;
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

    /// <summary>A guest's writes, or files unlinked after a delete answered, move figures without any event: reported all the same.</summary>
    [Fact]
    public async Task Figures_that_move_without_an_event_are_reported_within_the_figures_interval()
    {
        var pool = new StoragePool([_a]);
        _hypervisor = new SimHypervisor(_host, pool);
        var inventory = CreateTestProbe();
        Sys.ActorOf(HostReporter.Props("host-1", spmCapable: true, _hypervisor, pool, inventory.Ref, figuresInterval: TimeSpan.FromMilliseconds(500)));
        var before = Assert.Single(((DomainStatusReport)inventory.FishForMessage(m => m is DomainStatusReport, TimeSpan.FromSeconds(10))).Domains).UsedBytes;

        // made on the domain behind the reporter's back: no event it hears
        await _a.CreateVolumeAsync(new NewVolume(ImageId.New(), VolumeId.New(), VolumeFormat.Raw, 64 << 20, Allocation: VolumeAllocation.Preallocated));

        var later = (DomainStatusReport)inventory.FishForMessage(m => m is DomainStatusReport r && r.Domains.Single().UsedBytes > before, TimeSpan.FromSeconds(10));
        Assert.Equal(before + (64 << 20), later.Domains.Single().UsedBytes);
    }

    /// <summary>An unmount or a remount sends no event: the host looks on its own, and the Coordinator admits moves only to active domains.</summary>
    [Fact]
    public async Task A_domain_whose_mount_goes_is_reported_inactive_by_its_name_and_active_again_once_it_is_back()
    {
        var temp = new Storage.File.TempDomainRoot();
        try
        {
            await using var mount = await Storage.File.BindMount.MountAsync(Path.Combine(temp.Root, "exported"));
            var nfs = await LiveMigration.HostNode.Storage.File.FileStorageDomain.CreateAsync(mount.Path, DomainId.New(), "on-nfs", 1L << 30);
            var pool = new StoragePool([_a, nfs]);
            _hypervisor = new SimHypervisor(_host, pool);
            var inventory = CreateTestProbe();
            Sys.ActorOf(HostReporter.Props("host-1", spmCapable: true, _hypervisor, pool, inventory.Ref));
            DomainReport Reported(bool active) => inventory.FishForMessage<DomainStatusReport>(
                    r => r.Domains.Any(d => d.Id == nfs.Id && d.Active == active), HostReporter.ReachabilityInterval * 4)
                .Domains.Single(d => d.Id == nfs.Id);

            Assert.Equal("on-nfs", Reported(active: true).Name);
            await mount.UnmountAsync();
            var gone = Reported(active: false);
            Assert.Equal(("on-nfs", 0L), (gone.Name, gone.AvailableBytes));
            await mount.MountAgainAsync();
            Assert.True(Reported(active: true).AvailableBytes > 0);
        }
        finally
        {
            temp.Dispose();
        }
    }

    [Fact]
    public void Nothing_is_reported_before_the_HSM_adopted_the_running_VMs_and_all_of_it_right_after()
    {
        var pool = new StoragePool([_a]);
        _hypervisor = new SimHypervisor(_host, pool);
        var inventory = CreateTestProbe();
        var adopted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Sys.ActorOf(HostReporter.Props("host-1", spmCapable: true, _hypervisor, pool, inventory.Ref, adopted: adopted.Task));

        // until then a VM of the catalog that still runs would be reported stopped (a Coordinator fails its pre-copy)
        Sys.EventStream.Publish(new HostInventoryChanged("a change meanwhile"));
        inventory.ExpectNoMsg(TimeSpan.FromSeconds(2));
        adopted.SetResult();
        Assert.Equal("host-1", inventory.ExpectMsg<HostStatusReport>(TimeSpan.FromSeconds(10)).HostId);
        Assert.Equal(_a.Id, Assert.Single(inventory.ExpectMsg<DomainStatusReport>().Domains).Id);
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

        // one VM stops: the next part that names a VM names only it (a part of the whole view sent again before the
        // receipt is skipped, and so is a part that says nothing changed: the VMs' start events, delivered by the sim's
        // event pump after the reporter subscribed, each make a report of an unchanged VM)
        await _hypervisor.StopVmAsync(vms[7]);
        var after = ReceiveReports(inventory, until: p => !p.Whole && p.Vms.Count > 0).Where(p => !p.Whole).ToList();
        var change = after[^1];
        Assert.All(after[..^1], nothing => Assert.True(nothing.Vms.Count == 0 && nothing.Gone!.Count == 0));
        Assert.Equal(whole[0].Epoch, change.Epoch);
        // numbered on from the whole view, after any part that said nothing (a re-sent one may come twice)
        Assert.Equal(last.Seq + after.Select(p => p.Seq).Distinct().Count(), change.Seq);
        Assert.Equal((vms[7], false), (Assert.Single(change.Vms).Id, change.Vms[0].Running));
        Assert.Empty(change.Gone!);

        // the inventory recovered and does not know the chain: the whole view again, in a new chain
        reporter.Tell(new ReportAcknowledged(ReportAcknowledged.HostReport, change.At, change.Epoch, change.Seq, Resync: true), inventory.Ref);
        var again = ReceiveReports(inventory, until: p => p.WholeEnds && p.Epoch != whole[0].Epoch);
        var newChain = again.Where(p => p.Epoch != whole[0].Epoch).ToList();
        Assert.Equal(0, newChain[0].Seq);
        Assert.Equal(vms.Select(v => v.Value).Order(), newChain.SelectMany(p => p.Vms).Select(v => v.Id.Value).Order());
    }

    [Fact]
    public async Task After_a_step_only_the_vm_whose_image_it_changed_is_described_again_and_a_change_of_any_vm_describes_them_all()
    {
        var pool = new StoragePool([_a]);
        _hypervisor = new SimHypervisor(_host, pool);
        var images = new List<(VmId Vm, ImageId Image, VolumeId Base)>();
        // the sim raises each VM's start through an event pump: all eight delivered before the reporter subscribes, so
        // none of them makes it describe a VM again later
        var startsSeen = 0;
        var allStartsSeen = new TaskCompletionSource();
        _hypervisor.EventRaised += e =>
        {
            if (e is VmStarted && Interlocked.Increment(ref startsSeen) == 8) allStartsSeen.TrySetResult();
        };
        for (var i = 0; i < 8; i++)
        {
            var (image, volume) = (ImageId.New(), VolumeId.New());
            await _a.CreateVolumeAsync(new NewVolume(image, volume, VolumeFormat.Raw, 1L << 20, null));
            var vm = await _hypervisor.StartVmAsync(new VmSpec(VmId.New(), $"vm-{i}", [await pool.ResolveChainAsync(_a.Id, image)]));
            images.Add((vm.Id, image, volume));
        }
        await allStartsSeen.Task.WaitAsync(TimeSpan.FromSeconds(10));
        var inventory = CreateTestProbe();
        var reporter = Sys.ActorOf(HostReporter.Props("host-1", spmCapable: true, _hypervisor, pool, inventory.Ref));
        var whole = ReceiveReports(inventory, until: p => p.WholeEnds)[^1];
        reporter.Tell(new ReportAcknowledged(ReportAcknowledged.HostReport, whole.At, whole.Epoch, whole.Seq), inventory.Ref);

        // two guests wrote; a step finished on VM 3's image: its report is made again, VM 5's is kept as it was
        _a.SeedAllocated(images[3].Image, images[3].Base, 300 << 10);
        _a.SeedAllocated(images[5].Image, images[5].Base, 500 << 10);
        Sys.EventStream.Publish(new HostStateChanged(new OperationId(MigrationId.New(), Shared.Migration.MigrationStep.SyncInternalVolumes, images[3].Image, 1)));
        var step = ReceiveReports(inventory, until: p => !p.Whole)[^1];
        var described = Assert.Single(step.Vms);
        Assert.Equal((images[3].Vm, 300L << 10), (described.Id, described.Drives[0].AllocatedBytes));
        reporter.Tell(new ReportAcknowledged(ReportAcknowledged.HostReport, step.At, step.Epoch, step.Seq), inventory.Ref);

        // a step on an image no VM of this host has (an SPM step for another host's VM) describes none of them again
        Sys.EventStream.Publish(new HostStateChanged(new OperationId(MigrationId.New(), Shared.Migration.MigrationStep.CloneImageStructure, ImageId.New(), 1)));
        var other = ReceiveReports(inventory, until: p => !p.Whole && p.Seq > step.Seq)[^1];
        Assert.Empty(other.Vms);
        reporter.Tell(new ReportAcknowledged(ReportAcknowledged.HostReport, other.At, other.Epoch, other.Seq), inventory.Ref);

        // a change that may concern any VM (a domain attached) describes them all: VM 5's write shows now
        Sys.EventStream.Publish(new HostInventoryChanged("domain attached"));
        var all = ReceiveReports(inventory, until: p => !p.Whole && p.Seq > other.Seq)[^1];
        described = Assert.Single(all.Vms);
        Assert.Equal((images[5].Vm, 500L << 10), (described.Id, described.Drives[0].AllocatedBytes));
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
