using LiveMigration.HostNode.Guest;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Guest;

public sealed class WriteLedgerTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), $"lsm-ledger-{Guid.NewGuid():N}");
    private readonly ImageId _drive = ImageId.New();

    public WriteLedgerTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    /// <summary>The writer's timestamp is inside the checksum, so the tests stamp at one fixed instant to rebuild a block exactly.</summary>
    private static readonly DateTimeOffset At = new(2025, 1, 2, 3, 4, 5, TimeSpan.Zero);

    private static BlockStamp Stamp(ImageId drive, long offset, long seq, int blockSize = 4096) =>
        BlockStamp.Write(new byte[blockSize], drive, offset, seq, At);

    [Fact]
    public void A_stamped_block_reads_back_and_a_flipped_byte_is_caught()
    {
        var block = new byte[4096];
        var written = BlockStamp.Write(block, _drive, 81920, 42, DateTimeOffset.UtcNow);
        var read = BlockStamp.TryRead(block, out var problem);
        Assert.Null(problem);
        Assert.Equal(written, read);

        block[3000] ^= 1;
        Assert.Null(BlockStamp.TryRead(block, out problem));
        Assert.Contains("corrupt", problem);

        Assert.Null(BlockStamp.TryRead(new byte[4096], out problem));
        Assert.Contains("not a stamped block", problem);
    }

    [Fact]
    public void The_same_offset_and_sequence_give_the_same_payload_and_checksum()
    {
        var a = new byte[4096];
        var b = new byte[4096];
        var at = DateTimeOffset.UtcNow;
        Assert.Equal(BlockStamp.Write(a, _drive, 4096, 9, at).Checksum, BlockStamp.Write(b, _drive, 4096, 9, at).Checksum);
        Assert.Equal(a, b);
        Assert.NotEqual(BlockStamp.Write(b, _drive, 4096, 10, at).Checksum, BlockStamp.Write(a, _drive, 4096, 9, at).Checksum);
    }

    [Fact]
    public void The_ledger_file_round_trips_acknowledged_and_in_doubt_writes()
    {
        var path = Path.Combine(_folder, "ledger.txt");
        using (var ledger = WriteLedger.Open(path, _drive))
        {
            foreach (var (offset, seq) in new[] { (0L, 1L), (4096L, 2L), (0L, 3L) })
            {
                var stamp = Stamp(_drive, offset, seq);
                ledger.RecordSent(stamp);
                ledger.RecordAcknowledged(stamp);
            }
            ledger.RecordSent(Stamp(_drive, 4096, 4)); // the connection died under this one
            Assert.Equal(1, ledger.UnacknowledgedCount);
        }

        var loaded = WriteLedger.Load(path);
        Assert.Equal(_drive, loaded.Drive);
        Assert.Equal(4096, loaded.BlockSize);
        Assert.Equal(4, loaded.LastSequence);
        Assert.Equal(3, loaded.AcknowledgedWrites);
        Assert.Equal(1, loaded.UnacknowledgedCount);
        Assert.False(loaded.IsWritable);
        var blocks = loaded.Snapshot();
        Assert.Equal([0L, 4096L], blocks.Select(b => b.Offset));
        Assert.Equal(3, blocks[0].Acknowledged!.Value.Sequence);
        Assert.Empty(blocks[0].Unacknowledged);
        Assert.Equal(2, blocks[1].Acknowledged!.Value.Sequence);
        Assert.Equal(4, Assert.Single(blocks[1].Unacknowledged).Sequence);
        Assert.Equal(Stamp(_drive, 0, 3).Checksum, blocks[0].Acknowledged!.Value.Checksum);

        // reopening appends, and an acknowledgement supersedes the write in doubt on that block
        using (var again = WriteLedger.Open(path, _drive))
        {
            Assert.Equal(4, again.LastSequence);
            var stamp = Stamp(_drive, 4096, 5);
            again.RecordSent(stamp);
            again.RecordAcknowledged(stamp);
        }
        var final = WriteLedger.Load(path);
        Assert.Equal(0, final.UnacknowledgedCount);
        var block = final.Find(4096)!;
        Assert.Equal(5, block.Acknowledged!.Value.Sequence);
        Assert.Empty(block.Unacknowledged);
    }

    [Fact]
    public void A_line_cut_short_by_a_dying_writer_is_ignored_and_a_foreign_ledger_is_refused()
    {
        var path = Path.Combine(_folder, "ledger.txt");
        using (var ledger = WriteLedger.Open(path, _drive))
        {
            var stamp = Stamp(_drive, 8192, 1);
            ledger.RecordSent(stamp);
            ledger.RecordAcknowledged(stamp);
        }
        File.AppendAllText(path, "W 2 8192 00ab");
        var loaded = WriteLedger.Load(path);
        Assert.Equal(1, loaded.LastSequence);
        Assert.Equal(0, loaded.UnacknowledgedCount);

        var error = Assert.Throws<OperationFailedException>(() => WriteLedger.Open(path, ImageId.New()));
        Assert.Equal(ErrorCodes.Conflict, error.Code);
        Assert.Contains(_drive.ToString(), error.Message);
    }

    [Fact]
    public void A_malformed_ledger_names_the_line()
    {
        var path = Path.Combine(_folder, "bad.txt");
        File.WriteAllText(path, $"LSM-WRITE-LEDGER v1 drive={_drive} block-size=4096\nA 7\n");
        var error = Assert.Throws<OperationFailedException>(() => WriteLedger.Load(path));
        Assert.Equal(ErrorCodes.InvalidArgument, error.Code);
        Assert.Contains("line 2", error.Message);
    }

    [Fact]
    public void A_block_may_hold_its_last_acknowledged_stamp_or_the_one_in_doubt_and_nothing_else()
    {
        var ledger = WriteLedger.InMemory(_drive);
        var acknowledged = Stamp(_drive, 4096, 1);
        ledger.RecordSent(acknowledged);
        ledger.RecordAcknowledged(acknowledged);
        ledger.RecordSent(Stamp(_drive, 4096, 2));
        var expected = ledger.Find(4096)!;

        Assert.Null(GuestVerifier.Check(_drive, expected, Block(4096, 1)));
        Assert.Null(GuestVerifier.Check(_drive, expected, Block(4096, 2)));

        var newer = GuestVerifier.Check(_drive, expected, Block(4096, 3));
        Assert.NotNull(newer);
        Assert.Equal(3, newer.Value.Mismatch.FoundSequence);
        Assert.Contains("unacknowledged seq 2", newer.Value.Mismatch.Expected);
        // nothing was flushed: whatever is there, no durable write is missing
        Assert.Equal(MismatchKind.InDoubt, newer.Value.Kind);

        // same sequence number, different content: not the write that was acknowledged
        Assert.NotNull(GuestVerifier.Check(_drive, expected, Block(4096, 1, At.AddSeconds(1))));

        Assert.NotNull(GuestVerifier.Check(_drive, expected, new byte[4096]));
        Assert.NotNull(GuestVerifier.Check(_drive, expected, Block(8192, 1)));
        Assert.NotNull(GuestVerifier.Check(_drive, expected, BlockOf(ImageId.New(), 4096, 1)));
    }

    [Fact]
    public void A_block_only_ever_written_in_doubt_may_still_hold_its_old_content()
    {
        var ledger = WriteLedger.InMemory(_drive);
        ledger.RecordSent(Stamp(_drive, 0, 1));
        var expected = ledger.Find(0)!;
        Assert.Null(GuestVerifier.Check(_drive, expected, new byte[4096]));
        Assert.Null(GuestVerifier.Check(_drive, expected, Block(0, 1)));
        Assert.NotNull(GuestVerifier.Check(_drive, expected, Block(0, 5)));
    }

    // ---- durability: what a completed FLUSH or a FUA write promises

    private static void Write(WriteLedger ledger, BlockStamp stamp, bool acknowledged = true, bool fua = false)
    {
        ledger.RecordSent(stamp);
        if (acknowledged) ledger.RecordAcknowledged(stamp, fua);
    }

    [Fact]
    public void A_flush_makes_durable_exactly_the_writes_acknowledged_before_it()
    {
        var ledger = WriteLedger.InMemory(_drive);
        Write(ledger, Stamp(_drive, 0, 1));
        Write(ledger, Stamp(_drive, 4096, 2));
        Write(ledger, Stamp(_drive, 0, 3));
        Assert.Equal(0, ledger.DurableWrites);
        Assert.Equal(3, ledger.NotDurableCount);

        Assert.Equal(3, ledger.RecordFlushed(3));
        Assert.Equal(3, ledger.DurableWrites);
        Assert.Equal(0, ledger.NotDurableCount);
        Assert.Equal(3, ledger.LastFlushedSequence);

        Write(ledger, Stamp(_drive, 0, 4));              // acknowledged after the flush: not durable
        Write(ledger, Stamp(_drive, 8192, 5), acknowledged: false); // in flight when the connection died
        Assert.Equal(1, ledger.NotDurableCount);
        Assert.Equal(4, ledger.AcknowledgedWrites);

        var block0 = ledger.Find(0)!;
        Assert.Equal(3, block0.Durable!.Value.Sequence);
        Assert.Equal(4, block0.Acknowledged!.Value.Sequence);
        Assert.Equal([4L], block0.SinceDurable.Select(w => w.Sequence));
        var block4096 = ledger.Find(4096)!;
        Assert.Equal(2, block4096.Durable!.Value.Sequence);
        Assert.Equal(block4096.Durable, block4096.Acknowledged);
        Assert.Empty(block4096.SinceDurable);
        var block8192 = ledger.Find(8192)!;
        Assert.Null(block8192.Durable);
        Assert.Null(block8192.Acknowledged);
        Assert.Equal([5L], block8192.Unacknowledged.Select(w => w.Sequence));

        // a flush sent while seq 5 never got its answer covers seq 4 only: an unacknowledged write is never durable
        Assert.Equal(1, ledger.RecordFlushed(5));
        Assert.Equal(4, ledger.DurableWrites);
        Assert.Equal(4, ledger.Find(0)!.Durable!.Value.Sequence);
        Assert.Null(ledger.Find(8192)!.Durable);

        var backwards = Assert.Throws<OperationFailedException>(() => ledger.RecordFlushed(4));
        Assert.Contains("before the last flush", backwards.Message);
        Assert.Throws<OperationFailedException>(() => ledger.RecordFlushed(9));
    }

    [Fact]
    public void A_write_with_fua_is_durable_on_its_acknowledgement_and_an_older_flush_does_not_step_back()
    {
        var ledger = WriteLedger.InMemory(_drive);
        Write(ledger, Stamp(_drive, 0, 1));              // plain: waits for a flush
        Write(ledger, Stamp(_drive, 0, 2), fua: true);   // FUA on the same block: durable now
        Write(ledger, Stamp(_drive, 4096, 3), fua: true);
        Assert.Equal(2, ledger.DurableWrites);
        Assert.Equal(1, ledger.NotDurableCount);
        Assert.Equal(2, ledger.Find(0)!.Durable!.Value.Sequence);
        Assert.Empty(ledger.Find(0)!.SinceDurable);

        // the flush makes seq 1 durable too, but block 0 keeps seq 2 as its newest durable write
        Assert.Equal(1, ledger.RecordFlushed(3));
        Assert.Equal(3, ledger.DurableWrites);
        Assert.Equal(2, ledger.Find(0)!.Durable!.Value.Sequence);
    }

    [Fact]
    public void Durability_round_trips_through_the_v2_file_and_is_fsynced_with_each_flush()
    {
        var path = Path.Combine(_folder, "ledger.txt");
        using (var ledger = WriteLedger.Open(path, _drive))
        {
            Write(ledger, Stamp(_drive, 0, 1));
            Write(ledger, Stamp(_drive, 4096, 2));
            ledger.RecordFlushed(2);
            Write(ledger, Stamp(_drive, 0, 3));
            Write(ledger, Stamp(_drive, 8192, 4), fua: true);
            Write(ledger, Stamp(_drive, 8192, 5), acknowledged: false);
        }
        var lines = File.ReadAllLines(path);
        Assert.StartsWith("LSM-WRITE-LEDGER v2 ", lines[0]);
        Assert.Contains("F 2", lines);
        Assert.Contains("A 4 fua", lines);

        var loaded = WriteLedger.Load(path);
        Assert.Equal(2, loaded.Version);
        Assert.Equal(3, loaded.DurableWrites);
        Assert.Equal(1, loaded.NotDurableCount);
        Assert.Equal(1, loaded.UnacknowledgedCount);
        Assert.Equal(2, loaded.LastFlushedSequence);
        Assert.Equal(1, loaded.Find(0)!.Durable!.Value.Sequence);
        Assert.Equal(3, loaded.Find(0)!.Acknowledged!.Value.Sequence);
        Assert.Equal(4, loaded.Find(8192)!.Durable!.Value.Sequence);
        Assert.Equal([5L], loaded.Find(8192)!.SinceDurable.Select(w => w.Sequence));
    }

    [Fact]
    public void A_v1_ledger_loads_with_nothing_durable_and_is_upgraded_to_v2_when_appended_to()
    {
        var path = Path.Combine(_folder, "old.txt");
        var one = Stamp(_drive, 0, 1);
        var two = Stamp(_drive, 4096, 2);
        // what the previous program wrote, ending in a line a dying writer cut short
        File.WriteAllText(path, $"LSM-WRITE-LEDGER v1 drive={_drive} block-size=4096\n" +
                                $"W 1 0 {one.Checksum:x16}\nA 1\nW 2 4096 {two.Checksum:x16}\nA 2\nW 3 81");
        var old = WriteLedger.Load(path);
        Assert.Equal(1, old.Version);
        Assert.Equal(2, old.AcknowledgedWrites);
        Assert.Equal(0, old.DurableWrites);
        Assert.Equal(2, old.NotDurableCount);

        // v1 knows no flush records: one there is malformed, not silently taken
        var v1WithFlush = Path.Combine(_folder, "v1-flush.txt");
        File.WriteAllText(v1WithFlush, $"LSM-WRITE-LEDGER v1 drive={_drive} block-size=4096\nW 1 0 {one.Checksum:x16}\nA 1\nF 1\n");
        Assert.Contains("line 4", Assert.Throws<OperationFailedException>(() => WriteLedger.Load(v1WithFlush)).Message);

        using (var appended = WriteLedger.Open(path, _drive))
        {
            Assert.Equal(2, appended.Version);
            var three = Stamp(_drive, 0, 3);
            Write(appended, three);
            appended.RecordFlushed(3);
        }
        var text = File.ReadAllText(path);
        Assert.StartsWith($"LSM-WRITE-LEDGER v2 drive={_drive} block-size=4096\nW 1 0 ", text);
        Assert.DoesNotContain("W 3 81", text); // the torn line was cut off, not glued to the next record
        Assert.False(File.Exists(path + ".upgrade"));
        var upgraded = WriteLedger.Load(path);
        // the new run's flush covers its own write only: v1's writes were never flushed as far as anyone recorded
        Assert.Equal(1, upgraded.DurableWrites);
        Assert.Equal(3, upgraded.Find(0)!.Durable!.Value.Sequence);
        Assert.Null(upgraded.Find(4096)!.Durable);
        Assert.Equal(2, upgraded.Find(4096)!.Acknowledged!.Value.Sequence);

        File.WriteAllText(path, $"LSM-WRITE-LEDGER v3 drive={_drive} block-size=4096\n");
        Assert.Contains("version", Assert.Throws<OperationFailedException>(() => WriteLedger.Load(path)).Message);
    }

    [Fact]
    public void A_flush_in_a_new_run_does_not_make_the_earlier_runs_unflushed_writes_durable()
    {
        var path = Path.Combine(_folder, "ledger.txt");
        using (var first = WriteLedger.Open(path, _drive))
        {
            Write(first, Stamp(_drive, 0, 1));
            first.RecordFlushed(1);
            Write(first, Stamp(_drive, 0, 2)); // acknowledged, then QEMU was killed before any flush
        }
        using (var second = WriteLedger.Open(path, _drive))
        {
            Assert.Equal(0, second.NotDurableCount);
            Write(second, Stamp(_drive, 4096, 3));
            Assert.Equal(1, second.RecordFlushed(3));
            var block0 = second.Find(0)!;
            Assert.Equal(1, block0.Durable!.Value.Sequence); // seq 2 may have died with the old QEMU: never claimed
            Assert.Equal(2, block0.Acknowledged!.Value.Sequence);
        }
        Assert.Contains("R", File.ReadAllLines(path));
        var loaded = WriteLedger.Load(path);
        Assert.Equal(2, loaded.DurableWrites);
        Assert.Equal(1, loaded.Find(0)!.Durable!.Value.Sequence);
        Assert.Equal(3, loaded.Find(4096)!.Durable!.Value.Sequence);
        // the old QEMU took seq 2 with it: in doubt, not lost
        Assert.Equal(MismatchKind.InDoubt, GuestVerifier.Check(_drive, loaded.Find(0)!, Block(0, 1))!.Value.Kind);
    }

    [Fact]
    public void A_v2_ledger_with_a_torn_last_line_is_cut_before_appending()
    {
        var path = Path.Combine(_folder, "ledger.txt");
        using (var ledger = WriteLedger.Open(path, _drive))
            Write(ledger, Stamp(_drive, 0, 1));
        File.AppendAllText(path, "W 2 40");
        using (var again = WriteLedger.Open(path, _drive))
            Write(again, Stamp(_drive, 4096, 2));
        var loaded = WriteLedger.Load(path);
        Assert.Equal(2, loaded.AcknowledgedWrites);
        Assert.Equal(2, loaded.LastSequence);
    }

    [Fact]
    public void The_verifier_holds_durable_writes_to_never_lost_and_puts_unflushed_ones_in_doubt()
    {
        var ledger = WriteLedger.InMemory(_drive);
        Write(ledger, Stamp(_drive, 0, 1));
        ledger.RecordFlushed(1);                               // seq 1 durable on block 0
        Write(ledger, Stamp(_drive, 0, 2));                    // seq 2 acknowledged, not durable
        Write(ledger, Stamp(_drive, 0, 3), acknowledged: false);
        Write(ledger, Stamp(_drive, 4096, 4));                 // block 4096: nothing durable
        var block0 = ledger.Find(0)!;
        var block4096 = ledger.Find(4096)!;

        // current: the last acknowledged write, or the one after it that never got its answer
        Assert.Null(GuestVerifier.Check(_drive, block0, Block(0, 2)));
        Assert.Null(GuestVerifier.Check(_drive, block0, Block(0, 3)));
        // the durable write, the unflushed one lost: in doubt, not lost
        var back = GuestVerifier.Check(_drive, block0, Block(0, 1))!.Value;
        Assert.Equal(MismatchKind.InDoubt, back.Kind);
        Assert.Equal(1, back.Mismatch.FoundSequence);
        Assert.Contains("durable: seq 1", back.Mismatch.Expected);
        // the durable write gone: lost, whatever else is there
        Assert.Equal(MismatchKind.Lost, GuestVerifier.Check(_drive, block0, new byte[4096])!.Value.Kind);
        Assert.Equal(MismatchKind.Lost, GuestVerifier.Check(_drive, block0, Block(0, 1, At.AddSeconds(1)))!.Value.Kind);
        Assert.Equal(MismatchKind.Lost, GuestVerifier.Check(_drive, block0, Block(0, 7))!.Value.Kind);
        Assert.Equal(MismatchKind.Lost, GuestVerifier.Check(_drive, block0, Block(4096, 1))!.Value.Kind);
        var torn = Block(0, 2);
        torn[2000] ^= 0xff;
        Assert.Equal(MismatchKind.Lost, GuestVerifier.Check(_drive, block0, torn)!.Value.Kind);

        // nothing durable on the block: its old content is in doubt, never lost
        Assert.Null(GuestVerifier.Check(_drive, block4096, Block(4096, 4)));
        Assert.Equal(MismatchKind.InDoubt, GuestVerifier.Check(_drive, block4096, new byte[4096])!.Value.Kind);

        // once a flush covers seq 2, block 0 going back to seq 1 is a loss
        ledger.RecordFlushed(2);
        Assert.Equal(MismatchKind.Lost, GuestVerifier.Check(_drive, ledger.Find(0)!, Block(0, 1))!.Value.Kind);
        Assert.Null(GuestVerifier.Check(_drive, ledger.Find(0)!, Block(0, 3)));
    }

    private byte[] Block(long offset, long seq, DateTimeOffset? at = null) => BlockOf(_drive, offset, seq, at);

    private static byte[] BlockOf(ImageId drive, long offset, long seq, DateTimeOffset? at = null)
    {
        var block = new byte[4096];
        BlockStamp.Write(block, drive, offset, seq, at ?? At);
        return block;
    }
}
