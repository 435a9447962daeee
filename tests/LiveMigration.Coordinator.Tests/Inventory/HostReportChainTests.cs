using LiveMigration.Coordinator.Inventory;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Tests.Inventory;

/// <summary>
/// A host's report as a chain of parts: its whole view in several parts, then changes; taken in order only, a repeated part
/// changing nothing, a part after a gap waiting, a part of a chain the inventory does not know asking for a resync.
/// </summary>
public sealed class HostReportChainTests
{
    private static readonly DateTimeOffset T0 = InventoryFixtures.T0;
    private const string Address = "akka.tcp://lsm@127.0.0.1:4053";
    private static readonly long Epoch = T0.UtcTicks;

    private static VmReport Vm(int n, string domain = "a") => new(new VmId(new Guid(n, 0, 0, new byte[8])), $"vm-{n}", true,
        [new DriveReport(new ImageId(new Guid(n, 1, 0, new byte[8])), [new VolumeRef(new DomainId(new Guid(domain == "a" ? 1 : 2, 2, 0, new byte[8])), new VolumeId(new Guid(n, 3, 0, new byte[8])))], 1 << 30, 0)]);

    private static HostStatusReport Part(long seq, DateTimeOffset at, VmReport[] vms, bool whole = false, bool ends = false, VmId[]? gone = null, long? epoch = null) =>
        new("host-1", Address, SpmCapable: true, vms.ToValueList(), at, epoch ?? Epoch, seq, whole, ends, gone?.ToValueList());

    /// <summary>What the inventory actor does with a decision: the fact applied, the chain moved on; and the receipt.</summary>
    private static (InventoryState State, HostReportDecision Decision) Take(InventoryState state, HostStatusReport part)
    {
        var decision = InventoryDecider.Decide(state, part);
        var next = decision.Event is { } e ? state.Apply(e) : state;
        return (decision.Chain is { } chain ? next.Chained(part.HostId, chain, part.At) : next, decision);
    }

    private static IEnumerable<int> VmsOf(InventoryState state) => state.Hosts["host-1"].Vms.Select(v => v.Id.Value.ToByteArray()[0] | v.Id.Value.ToByteArray()[1] << 8);

    [Fact]
    public void A_whole_view_in_parts_replaces_what_the_inventory_listed_and_changes_after_it_touch_only_their_vms()
    {
        // before: the host ran 1, 2 and 9 (an older incarnation's whole view)
        var (state, _) = Take(InventoryState.Empty, Part(0, T0.AddSeconds(-10), [Vm(1), Vm(2), Vm(9)], whole: true, ends: true, epoch: 1));

        // the new whole view in three parts: 1 (moved to b), 2, 3 — 9 is gone when the last part says the view ends
        (state, var first) = Take(state, Part(0, T0, [Vm(1, "b")], whole: true));
        Assert.Equal(new ReportAcknowledged(ReportAcknowledged.HostReport, T0, Epoch, 0), first.Receipt);
        Assert.Equal([1, 2, 9], VmsOf(state));
        (state, _) = Take(state, Part(1, T0, [Vm(2)], whole: true));
        (state, var last) = Take(state, Part(2, T0, [Vm(3)], whole: true, ends: true));
        var change = Assert.IsType<HostVmsChanged>(last.Event);
        Assert.Equal([Vm(3).Id], change.Upserted.Select(v => v.Id));
        Assert.Equal([Vm(9).Id], change.Gone);
        Assert.Equal([1, 2, 3], VmsOf(state).Order());
        Assert.Equal(new DomainId(new Guid(2, 2, 0, new byte[8])), state.Hosts["host-1"].Vms[0].Drives[0].LeafDomain);

        // a change: 2 gone, 4 new; 1 and 3 untouched, and nothing journaled when a part says nothing new
        (state, var changed) = Take(state, Part(3, T0.AddSeconds(1), [Vm(4)], gone: [Vm(2).Id]));
        Assert.NotNull(changed.Event);
        Assert.Equal([1, 3, 4], VmsOf(state).Order());
        (state, var quiet) = Take(state, Part(4, T0.AddSeconds(2), []));
        Assert.Null(quiet.Event);
        Assert.Equal(4, quiet.Receipt!.Seq);
        Assert.Equal(T0.AddSeconds(2), state.Hosts["host-1"].LastReport);
    }

    [Fact]
    public void A_repeated_part_changes_nothing_a_part_after_a_gap_waits_and_an_unknown_chain_asks_for_the_whole_view()
    {
        var (state, _) = Take(InventoryState.Empty, Part(0, T0, [Vm(1)], whole: true, ends: true));
        (state, _) = Take(state, Part(1, T0.AddSeconds(1), [Vm(2)]));

        // part 1 again (its receipt was lost): acknowledged up to the newest part taken, nothing applied twice
        var (again, repeated) = Take(state, Part(1, T0.AddSeconds(1), [Vm(2)]));
        Assert.Null(repeated.Event);
        Assert.Equal(1, repeated.Receipt!.Seq);
        Assert.Equal(state.Hosts, again.Hosts);

        // part 3 before part 2: no receipt, nothing applied; the host sends both again, in order
        var (gap, early) = Take(state, Part(3, T0.AddSeconds(3), [], gone: [Vm(1).Id]));
        Assert.Null(early.Receipt);
        Assert.Equal([1, 2], VmsOf(gap).Order());
        (state, _) = Take(state, Part(2, T0.AddSeconds(2), [Vm(5)]));
        (state, var inOrder) = Take(state, Part(3, T0.AddSeconds(3), [], gone: [Vm(1).Id]));
        Assert.Equal(3, inOrder.Receipt!.Seq);
        Assert.Equal([2, 5], VmsOf(state).Order());

        // the inventory recovered (chains are not journaled): a change it cannot place asks for the whole view
        var recovered = InventoryState.FromSnapshot(state.Snapshot());
        var (_, unknown) = Take(recovered, Part(4, T0.AddSeconds(4), [Vm(6)]));
        Assert.True(unknown.Receipt!.Resync);
        Assert.Null(unknown.Event);

        // an older incarnation's whole view, late: acknowledged, ignored
        var (_, stale) = Take(state, Part(0, T0.AddSeconds(-5), [Vm(7)], whole: true, ends: true, epoch: 2));
        Assert.Null(stale.Event);
        Assert.Null(stale.Chain);
        Assert.False(stale.Receipt!.Resync);
    }
}
