using System.Text.Json;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.HostNode.Inventory;

/// <summary>
/// Splits what a host reports into parts that each fit a remote message: Akka.Remote drops a message over its frame size
/// (128,000 bytes by default) with only a log line on the sender, and a host of a few hundred VMs, each with its chains,
/// says more than that. Each VM is measured as the protocol serializer writes it.
/// </summary>
public static class HostReportParts
{
    /// <summary>What one part may hold: half the default frame, so the part's own fields and a VM larger than guessed still fit.</summary>
    public const int BudgetBytes = 64_000;

    /// <summary>A VM id as it is written: a quoted UUID and a comma.</summary>
    private const int GoneIdBytes = 40;

    public sealed record Part(ValueList<VmReport> Vms, ValueList<VmId> Gone);

    /// <summary>The VMs, then the gone ids, in order, in as few parts as the budget allows; at least one part (maybe empty).</summary>
    public static IReadOnlyList<Part> Split(IReadOnlyList<VmReport> vms, IReadOnlyList<VmId> gone, int budgetBytes = BudgetBytes)
    {
        var parts = new List<Part>();
        var partVms = new List<VmReport>();
        var partGone = new List<VmId>();
        var used = 0;
        void Close()
        {
            parts.Add(new Part(partVms.ToValueList(), partGone.ToValueList()));
            partVms = [];
            partGone = [];
            used = 0;
        }
        foreach (var vm in vms)
        {
            var size = JsonSerializer.SerializeToUtf8Bytes(vm, ProtocolJson.Options).Length;
            if (used > 0 && used + size > budgetBytes) Close();
            partVms.Add(vm);
            used += size;
        }
        foreach (var id in gone)
        {
            if (used > 0 && used + GoneIdBytes > budgetBytes) Close();
            partGone.Add(id);
            used += GoneIdBytes;
        }
        if (used > 0 || parts.Count == 0) Close();
        return parts;
    }
}
